"""The command line as a user runs it: output folders, interruptions and resume, early checks, the console.

The commands run in subprocesses and receive real signals once their work has started.
"""
import collections
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import yaml
from histpy import Histogram
from test_pipeline import fit_config

from cosi_imaging_plugin import __version__
from cosi_imaging_plugin.cli import build_parser, deconvolve_main, main
from cosi_imaging_plugin.errors import CosiFileError, CosiInputError
from cosi_imaging_plugin.io.histograms import read_histogram, write_histogram
from cosi_imaging_plugin.outputs import Interrupted, OutputExistsError, OutputFolder, interrupts_from_signals
from cosi_imaging_plugin.pipeline import _model, check_fit_config, read_fit_config

# long enough that a signal always arrives while iterating (no stopping before iteration_max)
LONG_RUN = ["--override", "deconvolution:parameter:iteration_max = 60",
            "--override", "deconvolution:parameter:stopping_criteria:threshold = 0"]


def interrupt_when(command, pattern, sig, cwd):
    """Run `command`, send `sig` once a line of its standard error matches `pattern`; (status, stdout, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if re.search(pattern, line):
            process.send_signal(sig)
            break
    out, err = process.communicate(timeout=300)
    return process.returncode, out, "".join(seen) + err


def final_loglikelihood(folder):
    with h5py.File(folder / "results.h5", "r") as f:
        return int(f.attrs["final_iteration"]), float(np.sum(f[f"iteration{f.attrs['final_iteration']}"]
                                                           .attrs["loglikelihood"]))


# ---- the output-folder policy ------------------------------------------------------------------

def test_output_folder_swaps_in_only_complete_runs(tmp_path):
    target = tmp_path / "out"
    with OutputFolder(target) as out:
        (out.work / "a.txt").write_text("first")
        assert not target.exists() and out.work.parent == tmp_path
    assert (target / "a.txt").read_text() == "first"
    header = (target / "run.log").read_text()
    assert "# command:" in header and "# version cosi-imaging-plugin: " + __version__ in header
    with pytest.raises(OutputExistsError, match="--overwrite"):
        OutputFolder(target).__enter__()
    # a failed or interrupted rerun leaves the old products untouched and no temporary folder
    for error in (RuntimeError("failed"), Interrupted(signal.SIGTERM)):
        with pytest.raises(type(error)):
            with OutputFolder(target, overwrite=True) as out:
                (out.work / "b.txt").write_text("second")
                raise error
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        assert sorted(p.name for p in target.iterdir()) == ["a.txt", "report.html", "run.log"]
    # unless the run keeps a resumable state
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(target, overwrite=True) as out:
            (out.work / "state.txt").write_text("resumable")
            out.keep_on_interrupt = True
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["report.html", "run.log", "state.txt"]


def test_output_folder_refuses_unusable_folders(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("not a product")
    with pytest.raises(OutputExistsError, match="not made by cosi-imaging"):
        OutputFolder(mine, overwrite=True).__enter__()
    assert (mine / "thesis.tex").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CosiFileError, match="cannot create the output folder"):
        OutputFolder(blocker / "out").__enter__()
    with pytest.raises(CosiFileError, match="is a file"):
        OutputFolder(blocker).__enter__()


def without_privilege(command):
    """`command` run without the power to override file permissions, or None where the machine cannot.

    An ordinary user's process is bound by permissions as it is; the superuser's is once
    ``setpriv`` drops the capabilities that bypass them (the interpreter stays readable).
    """
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None or subprocess.run([setpriv, "--bounding-set=-dac_override", "true"]).returncode != 0:
        return None
    return [setpriv, "--bounding-set=-dac_override,-fowner", *command]


def test_read_only_output_folder_is_refused_before_any_work(tmp_path, cli_dataset, cosi_imaging):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "run.log").write_text("# an earlier run, now read-only\n")
    readonly.chmod(0o555)
    try:
        for output, message in ((readonly, "is not writable"), (readonly / "rl", f"{readonly} is not writable")):
            command = without_privilege([*cosi_imaging, "deconvolve", "--data", str(cli_dataset), "-o",
                                         str(output), "--overwrite"])
            if command is None:
                pytest.skip("this machine cannot run a process bound by file permissions (no setpriv)")
            run = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert run.returncode == 2, run.stderr[-2000:]
            assert message in run.stderr
            # refused before any work: no iteration logged, nothing written
            assert "iteration" not in run.stderr.lower()
            assert sorted(p.name for p in readonly.iterdir()) == ["run.log"]
    finally:
        readonly.chmod(0o755)


def test_checksums_of_the_inputs_in_run_log(tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(b"cosi")
    with OutputFolder(tmp_path / "out", command="cosi-imaging test") as out:
        checksums = out.record_inputs({"data": source})
    digest = hashlib.sha256(b"cosi").hexdigest()
    assert checksums == {str(source.resolve()): digest}
    text = (tmp_path / "out" / "run.log").read_text()
    assert "# command: cosi-imaging test" in text and f"sha256 {digest}" in text


# ---- simulate: a second run, SIGTERM -----------------------------------------------------------

def test_simulate_refuses_its_folder_and_cleans_up_on_sigterm(cli_dataset, cosi_imaging, tmp_path):
    config = cli_dataset.parent / "tiny.yaml"
    again = subprocess.run([*cosi_imaging, "simulate", str(config), "-o", str(cli_dataset)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2
    assert "not empty" in again.stderr and "--overwrite" in again.stderr and "overwrite=True)" in again.stderr
    status, _, err = interrupt_when([*cosi_imaging, "-v", "simulate", str(config), "-o", "sim"],
                                    "generating synthetic response", signal.SIGTERM, tmp_path)
    assert status == 128 + signal.SIGTERM, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its hidden temporary sibling


# ---- deconvolve: SIGINT (Ctrl-C), the saved state, --resume -------------------------------------

@pytest.fixture(scope="module")
def interrupted_deconvolution(cli_dataset, cosi_imaging, tmp_path_factory):
    root = tmp_path_factory.mktemp("deconvolve")
    status, out, err = interrupt_when([*cosi_imaging, "deconvolve", "--data", str(cli_dataset), "-o", "rl", "-vv",
                                       *LONG_RUN], r"RL iteration 6/", signal.SIGINT, root)
    return root, status, err


def test_interrupted_deconvolution_saves_its_last_iteration(interrupted_deconvolution):
    root, status, err = interrupted_deconvolution
    assert status == 128 + signal.SIGINT, err
    iteration, _ = final_loglikelihood(root / "rl")
    assert 5 <= iteration < 60
    record = json.loads((root / "rl" / "deconvolve.json").read_text())
    assert record["complete"] is False and record["iterations"] == iteration
    assert f"iteration {iteration} saved in rl; resume with: cosi-imaging deconvolve --resume rl" in err
    report = (root / "rl" / "report.html").read_text()
    assert "<h2>Convergence</h2>" in report and "interrupted (resume with --resume)" in report
    assert sorted(p.name for p in root.iterdir()) == ["rl"]


def test_resumed_deconvolution_equals_an_uninterrupted_one(interrupted_deconvolution, cli_dataset, cosi_imaging,
                                                           tmp_path):
    root, _, _ = interrupted_deconvolution
    resumed = subprocess.run([*cosi_imaging, "deconvolve", "--resume", "rl", "-q"], cwd=root, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "60 iterations" in resumed.stdout
    assert "%|" not in resumed.stderr  # -q: no progress bars
    reference = deconvolve_main(None, cli_dataset, tmp_path / "reference", progress=False,
                                overrides=[LONG_RUN[1], LONG_RUN[3]])
    iteration, loglikelihood = final_loglikelihood(root / "rl")
    assert iteration == reference["iterations"] == 60
    # the resumed run repeats the same arithmetic: equal up to the summation order of threaded sums
    assert loglikelihood == pytest.approx(reference["loglikelihood"], rel=1e-12)
    assert json.loads((root / "rl" / "deconvolve.json").read_text())["complete"] is True
    described = subprocess.run([*cosi_imaging, "info", "rl"], cwd=root, capture_output=True, text=True, timeout=300)
    assert described.returncode == 0, described.stderr
    assert "deconvolution results (RL), final iteration 60" in described.stdout
    assert "finished at iteration 60" in described.stdout and "run log; command: cosi-imaging" in described.stdout


# ---- fit: interrupted after its RL stage, rerun with --overwrite ---------------------------------

def test_fit_interrupted_after_its_rl_stage_keeps_it_for_the_rerun(tmp_path, cli_dataset, cosi_imaging):
    config = fit_config({"manifest": str(cli_dataset / "manifest.yaml")})
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    command = [*cosi_imaging, "fit", "fit.yaml", "-o", "fit", "-v"]
    status, _, err = interrupt_when(command, r"stage: fit$", signal.SIGTERM, tmp_path)
    assert status == 128 + signal.SIGTERM, err
    assert "the finished stages (data, RL image) are kept in fit" in err
    # the finished stage swapped in whole, no products of the unfinished one, no temporary sibling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "fit.yaml"]
    assert (tmp_path / "fit" / "rl" / "results.h5").is_file() and (tmp_path / "fit" / "run.log").is_file()
    assert not (tmp_path / "fit" / "summary.json").exists()
    rerun = subprocess.run([*command, "--overwrite"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reusing the finished RL stage of the previous run" in rerun.stderr
    assert (tmp_path / "fit" / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "fit.yaml"]


# ---- configurations checked in full before any work ---------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda c: c["fit"].update(minimiser="minuit"), "fit.minimiser': unknown key (did you mean 'minimizer'?)"),
    (lambda c: c["model"].update(initialise_from_rl=True), "did you mean 'initialize_from_rl'?"),
    (lambda c: c["backgrounds"]["albedo"].update(bonds=[0, 2]), "backgrounds.albedo.bonds': unknown key "
                                                                "(did you mean 'bounds'?)"),
    (lambda c: c["backgrounds"].update(albdo={"bounds": [0, 2]}), "did you mean 'albedo'?"),
    (lambda c: c["model"]["sources"][0]["spatial"].update(sigmaa={"value": 5.0}), "did you mean 'sigma'?"),
    (lambda c: c["deconvolution"]["overrides"].append("deconvolution:parameter:iteration_mx = 3"),
     "did you mean 'iteration_max'?"),
])
def test_fit_configuration_errors_come_before_any_work(tmp_path, cli_dataset, change, message):
    config = fit_config({"manifest": str(cli_dataset / "manifest.yaml")})
    config["backgrounds"] = {"albedo": {"bounds": [0.0, 10.0]}}
    change(config)
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CosiInputError, match=re.escape(message)):
        check_fit_config(read_fit_config(path))
    assert main(["fit", str(path), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.yaml"]


def test_missing_file_and_unknown_builtin_are_told_apart(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nonexistent.yaml"), "-o", str(tmp_path / "out")]) == 2
    assert "fit configuration file" in capsys.readouterr().err
    assert main(["fit", "demo_mini_511kev", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no built-in fit configuration 'demo_mini_511kev' (did you mean 'demo_mini_511keV'?)" in err
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- the console -------------------------------------------------------------------------------

def terminal_screen(stream):
    """The lines a terminal shows after printing `stream`: carriage returns overwrite, ESC[nA moves up."""
    lines, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n])", stream):
        count, code, carriage, newline, char = token
        if code == "A":
            row = max(row - int(count or 1), 0)
        elif carriage:
            col = 0
        elif newline:
            row, col = row + 1, 0
        elif char:
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = char
            col += 1
        while len(lines) <= row:
            lines.append([])
    return ["".join(line).rstrip() for line in lines]


def test_progress_bars_and_log_lines_never_tangle(tmp_path, cli_dataset, cosi_imaging):
    """Every record of run.log shown at -v is a whole line of the terminal, with no bar beside or over it."""
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit_config({"manifest": str(cli_dataset / "manifest.yaml")})))
    # bytes: text mode would turn the bars' carriage returns into newlines
    run = subprocess.run([*cosi_imaging, "fit", "fit.yaml", "-o", "fit", "-v"], cwd=tmp_path, capture_output=True,
                         timeout=600)
    stderr = run.stderr.decode()
    assert run.returncode == 0, stderr[-2000:]
    assert "%|" in stderr  # bars were drawn
    screen = terminal_screen(stderr)
    records = [re.match(r"^\S+ \S+ (INFO|WARNING|ERROR) (\S+): (.*)$", line)
               for line in (tmp_path / "fit" / "run.log").read_text().splitlines()]
    shown = [f"{m[1]} {m[2]}: {m[3]}".rstrip() for m in records if m]
    assert len(shown) > 20
    missing = [line for line in shown if line not in screen]
    assert not missing, missing[:5]
    for line in screen:
        if re.match(r".*\b(DEBUG|INFO|WARNING|ERROR) [\w.]+: ", line):
            assert re.match(r"^(DEBUG|INFO|WARNING|ERROR) ", line) and "%|" not in line, line
    # nothing printed past the bars (third-party warnings included) leaves a stale copy of a bar behind
    bars = collections.Counter(m[1] for m in map(re.compile(r"^([\w ]+): +\d+%\|").match, screen) if m)
    assert bars and max(bars.values()) == 1, bars


def test_global_options_after_the_subcommand_and_version(cosi_imaging):
    parser = build_parser()
    assert parser.parse_args(["info", "x", "-vv"]).verbose == 2
    assert parser.parse_args(["-v", "info", "x"]).verbose == 1
    assert parser.parse_args(["info", "x", "-q"]).quiet is True
    assert parser.parse_args(["info", "x"]).verbose == 0
    version = subprocess.run([*cosi_imaging, "--version"], capture_output=True, text=True, timeout=300)
    assert version.stdout.strip() == f"cosi-imaging {__version__}"


def test_info_on_a_dataset_and_the_current_folder(cli_dataset, capsys, monkeypatch):
    assert main(["info", str(cli_dataset)]) == 0
    out = capsys.readouterr().out
    assert "dataset 'tiny'" in out and "backgrounds: albedo (bkg_albedo.hdf5)" in out
    monkeypatch.chdir(cli_dataset.parent)
    assert main(["info", "."]) == 0
    assert "tiny/: dataset 'tiny'" in capsys.readouterr().out


def test_no_bound_warnings_from_the_package_set_up():
    """Setting a parameter and bounds that exclude astromodels' default value warns of nothing."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    target = logging.getLogger("astromodels.core.parameter")
    target.addHandler(handler)
    try:
        config = read_fit_config("demo_mini_511keV")
        model = _model(config)
    finally:
        target.removeHandler(handler)
    assert model.bulge_511.spectrum.main.Gaussian.F.value == 5.0e-4
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_non_integer_counts_are_refused_naming_the_bin(cli_dataset, tmp_path, capsys):
    dataset = tmp_path / "edited"
    shutil.copytree(cli_dataset, dataset)
    data = read_histogram(dataset / "data_scatt.hdf5")
    contents = data.contents.todense() if hasattr(data.contents, "todense") else np.asarray(data.contents)
    contents = contents.astype(float)
    contents[3, 0, 2, 5] = 2.5
    write_histogram(Histogram(data.axes, contents=contents), dataset / "data_scatt.hdf5")
    assert main(["deconvolve", "--data", str(dataset), "-o", str(tmp_path / "rl"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "data_scatt.hdf5 [hist]: binned data has 1 non-integer bin(s), first at bin (3, 0, 2, 5) (value 2.5)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]


def test_a_signal_handled_inside_a_finalizer_still_interrupts_the_run():
    """Python ignores an exception raised while a finalizer runs: the signal is delivered again after it."""
    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the finalizer
                pass

    with pytest.raises(Interrupted) as caught:
        with interrupts_from_signals():
            Finalized()
            time.sleep(2.0)  # the signal, delivered again, ends the wait
    assert caught.value.exit_status == 128 + signal.SIGTERM
