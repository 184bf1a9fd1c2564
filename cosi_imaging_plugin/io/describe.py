"""A short text description of any COSI file this package reads, and of its own outputs.

:func:`describe_file` describes one file (response, histogram, ``.ori``, exposure
table, deconvolution results, 3ML results, ``summary.json``, ``manifest.yaml``,
``run.log``); :func:`describe_path` also describes a folder: a dataset (its
manifest's files), or an output folder of the ``cosi-imaging`` command (its run and
products).
"""
import json
import re
from pathlib import Path

import h5py
import numpy as np

from ..binning import frame_name, normalize_scheme
from ..errors import CosiFileError
from .deconvolution_results import FORMAT as RESULTS_FORMAT
from .exposure_table_file import read_exposure_table_columns
from .histograms import read_histogram
from .ori_file import read_ori
from .response import FullDetectorResponse


def _axes_lines(axes):
    lines = []
    for axis in axes:
        if hasattr(axis, "nside"):
            frame = frame_name(axis)
            lines.append(f"  {axis.label}: HEALPix NSIDE {axis.nside} {axis.scheme} ({frame}), {axis.nbins} pixels")
        else:
            edges = axis.edges
            lines.append(f"  {axis.label}: {axis.nbins} bins, {edges[0]} .. {edges[-1]}")
    return lines


def _total_livetime(records):
    """Sum of the interval live times in seconds; without a livetime column, the elapsed time.

    Unlike :attr:`cosi_imaging_plugin.exposure.Orientation.total_livetime` the elapsed time
    ignores leap seconds, which is close enough for a one-line summary.
    """
    if records.livetime is None:
        return float(records.time[-1] - records.time[0])
    return float(np.sum(records.livetime[:-1]))


def describe_file(path):
    """Describe a response, histogram, orientation or exposure-table file.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    str
    """
    path = Path(path)
    if not path.is_file():
        raise CosiFileError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    own = _describe_own_file(path)
    if own is not None:
        return own
    if path.suffix == ".ori":
        rec = read_ori(path)
        t = rec.time
        return (f"{path}: orientation, {len(t)} samples over {t[-1] - t[0]:.1f} s, "
                f"livetime {_total_livetime(rec):.1f} s")
    if path.suffix in (".fits", ".fit"):
        table = read_exposure_table_columns(path)
        return (f"{path}: exposure table, {len(table.healpix_index_z)} ScAtt bins at NSIDE {table.nside} "
                f"({normalize_scheme(table.scheme)})")
    try:
        with h5py.File(path, "r") as f:
            is_response = "DRM" in f
            groups = list(f.keys())
            attrs = dict(f.attrs)
    except OSError as exc:
        raise CosiFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if attrs.get("format") == RESULTS_FORMAT:
        return _describe_results(path, attrs, groups)
    if is_response:
        with FullDetectorResponse.open(path) as rsp:
            kind = "sparse" if rsp.is_sparse else "dense"
            head = f"{path}: FullDetectorResponse v{rsp.version} ({kind}), unit {rsp.unit}, shape {rsp.shape}"
            return "\n".join([head, *_axes_lines(rsp.axes)])
    name = "hist" if "hist" in groups else groups[0]
    hist = read_histogram(path, name=name)
    contents = hist.contents
    values = contents.data if hasattr(contents, "coords") else np.asarray(getattr(contents, "value", contents))
    head = (f"{path}: histogram '{name}', shape {tuple(int(n) for n in hist.axes.nbins)}, unit {hist.unit}, "
            f"{'sparse' if hist.is_sparse else 'dense'}, total {float(np.sum(values)):.6g}")
    return "\n".join([head, *_axes_lines(hist.axes)])


def _describe_results(path, attrs, groups):
    names = json.loads(attrs.get("dataset_names", "[]"))
    return (f"{path}: deconvolution results ({attrs.get('algorithm') or 'unknown algorithm'}), final iteration "
            f"{int(attrs.get('final_iteration', -1))}, {len(groups)} iteration(s) stored, datasets {names}")


def _describe_own_file(path):
    """The description of a product of this package (None for other files)."""
    name = path.name
    if name == "summary.json":
        summary = json.loads(path.read_text())
        band = summary.get("band_kev")
        lines = [f"{path}: fit summary" + (f", band {band[0]:g}-{band[1]:g} keV" if band else "")]
        for source, entry in summary.get("sources", {}).items():
            error = entry.get("flux_error")
            lines.append(f"  {source}: flux {entry['flux']:.5g}" + (f" +- {error:.2g}" if error else "")
                         + " ph cm-2 s-1")
        for bkg, entry in summary.get("backgrounds", {}).items():
            lines.append(f"  background {bkg}: norm {entry['norm']:.5g}")
        return "\n".join(lines)
    if name == "deconvolve.json":
        record = json.loads(path.read_text())
        state = "finished" if record.get("complete") else "interrupted (resumable)"
        return (f"{path}: deconvolution of {record.get('data')}, {state} at iteration {record.get('iterations')}"
                f"; overrides {record.get('overrides') or []}")
    if name == "run.log":
        header = [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
        command = next((line for line in header if line.startswith("command:")), "command: unknown")
        started = next((line for line in header if line.startswith("started:")), "")
        inputs = sum(line.startswith("input ") for line in header)
        return f"{path}: run log; {command}; {started}; {inputs} input file(s) checksummed"
    if name == "report.html":
        return f"{path}: the run's report, one self-contained page ({path.stat().st_size / 1e6:.1f} MB)"
    if name in ("manifest.yaml", "manifest.yml"):
        return _describe_dataset(path)
    if path.suffix == ".fits":
        from astropy.io import fits

        with fits.open(path) as hdus:
            names = [hdu.name for hdu in hdus]
            rows = hdus["ANALYSIS_RESULTS"].data if "ANALYSIS_RESULTS" in names else None
            if rows is not None:
                model = hdus["ANALYSIS_RESULTS"].header.get("MODEL", "")
                # the package's own shapes (sky.functions) need their classes defined before reading
                needs = "threeML.load_analysis_results reads it"
                if re.search(r"\bGalactic_(disk|gaussian)\b", model):
                    needs += " once cosi_imaging_plugin.sky is imported"
                lines = [f"{path}: 3ML analysis results, {len(rows)} free parameter(s) ({needs})"]
                lines += [f"  {row['NAME']}: {row['VALUE']:.5g} +- {row['ERROR']:.2g} {row['UNIT']}".rstrip()
                          for row in rows]
                return "\n".join(lines)
        if "RESULTS" in names or any(n.startswith("ITERATION") for n in names):
            return f"{path}: deconvolution results table; HDUs {names}"
    return None


def _describe_dataset(manifest_path):
    from .manifest import read_manifest

    manifest = read_manifest(manifest_path)
    lines = [f"{manifest.directory}: dataset" + (f" '{manifest.config['name']}'" if manifest.config.get("name")
                                                  else "")]
    for role, value in manifest.roles().items():
        if isinstance(value, dict):
            lines.append(f"  {role}: " + ", ".join(f"{name} ({Path(file).name})" for name, file in value.items()))
        else:
            lines.append(f"  {role}: {Path(value).name}")
    return "\n".join(lines)


#: What each product of an output folder is, in the order they are described.
PRODUCTS = {
    "manifest.yaml": "a dataset",
    "summary.json": "fitted parameters and fluxes",
    "fit_results.fits": "3ML results",
    "fit_results_full.fits": "3ML results with the package's shapes",
    "results.h5": "deconvolution results",
    "deconvolve.json": "the inputs of a deconvolution (for --resume)",
    "ts_map.h5": "a TS map",
    "detections.ecsv": "a table of detections",
    "report.html": "the run's report",
    "run.log": "the run's log",
}


def describe_path(path):
    """Describe a file (:func:`describe_file`) or a folder: a dataset, or an output folder of ``cosi-imaging``.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    str
    """
    path = Path(path)
    if not path.is_dir():
        return describe_file(path)  # which names a missing path
    if (path / "manifest.yaml").is_file():
        return _describe_dataset(path / "manifest.yaml")
    found = [name for name in PRODUCTS if (path / name).is_file()]
    subfolders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found and not subfolders:
        files = sorted(p.name for p in path.iterdir() if p.is_file())
        return f"{path.resolve()}: folder with {len(files)} file(s), none a product of cosi-imaging"
    lines = [f"{path.resolve()}: " + ("output folder of cosi-imaging" if found else "folder")]
    for name in found:
        detail = describe_file(path / name).split("\n")
        lines.append(f"  {name} ({PRODUCTS[name]}): {detail[0].split(': ', 1)[-1]}")
        lines.extend(f"  {line}" for line in detail[1:])
    for folder in subfolders:
        if (path / folder / "manifest.yaml").is_file():
            lines.append(f"  {folder}/: " + _describe_dataset(path / folder / "manifest.yaml").split("\n")[0]
                         .split(": ", 1)[-1])
            continue
        inner = [name for name in PRODUCTS if (path / folder / name).is_file()]
        if any((path / folder).rglob("manifest.yaml")):
            inner.append("dataset(s)")
        lines.append(f"  {folder}/: " + (", ".join(inner) if inner else "other files"))
    return "\n".join(lines)
