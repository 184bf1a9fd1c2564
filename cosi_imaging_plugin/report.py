"""``report.html``: one self-contained page for the run in an output folder.

The page reads only the folder's files: the command, the versions and the inputs'
checksums from ``run.log``; the fitted parameters, fluxes and background
normalizations from ``summary.json``; a deconvolution's state from
``deconvolve.json``; and every PNG figure, embedded as base64 (no network, no
side files). Sections: inputs, results, images, convergence, residuals,
provenance.
"""
import base64
import datetime
import html
import json
from pathlib import Path

from ._atomic import atomic_path

#: Sections of figures: (title, test on the figure's path relative to the folder).
FIGURE_SECTIONS = [
    ("Images", lambda p: "convergence" not in p.name and "residual" not in p.name),
    ("Convergence", lambda p: "convergence" in p.name),
    ("Residuals", lambda p: "residual" in p.name),
]

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; overflow-wrap: anywhere; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def _header(folder):
    """The ``# key: value`` lines at the top of ``run.log``: (fields, input lines)."""
    log = folder / "run.log"
    fields, inputs = {}, []
    if not log.is_file():
        return fields, inputs
    for line in log.read_text().splitlines():
        if not line.startswith("# "):
            continue
        key, _, value = line[2:].partition(": ")
        if key.startswith("input "):
            inputs.append((key[len("input "):], value))
        else:
            fields[key] = value
    return fields, inputs


def _table(header, rows, numeric=()):
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(
            f"<td class=\"num\">{html.escape(str(v))}</td>" if i in numeric else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number(value, digits=5):
    return "" if value is None else f"{value:.{digits}g}"


def _results(folder):
    """HTML of the results: fitted parameters, fluxes and backgrounds, or a deconvolution's state."""
    parts = []
    summary_file = folder / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        parts.append("<h3>Fitted parameters</h3>" + _table(
            ["parameter", "value", "error", "unit"],
            [(path, _number(e["value"]), _number(e["error"], 3), e.get("unit", ""))
             for path, e in summary.get("parameters", {}).items()], numeric=(1, 2)))
        band = summary.get("band_kev")
        band_text = f" in {band[0]:g}-{band[1]:g} keV" if band else ""
        parts.append(f"<h3>Fluxes{band_text} (ph cm-2 s-1)</h3>" + _table(
            ["source", "flux", "error", "injected", "pull"],
            [(name, _number(e["flux"]), _number(e.get("flux_error"), 3), _number(e.get("flux_injected")),
              _number(e.get("flux_pull"), 3)) for name, e in summary.get("sources", {}).items()],
            numeric=(1, 2, 3, 4)))
        parts.append("<h3>Background normalizations</h3>" + _table(
            ["template", "norm", "error", "injected"],
            [(name, _number(e["norm"]), _number(e.get("error"), 3), _number(e.get("norm_injected")))
             for name, e in summary.get("backgrounds", {}).items()], numeric=(1, 2, 3)))
    record_file = folder / "deconvolve.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        state = "finished" if record.get("complete") else "interrupted (resume with --resume)"
        parts.append("<h3>Deconvolution</h3>" + _table(
            ["iterations", "state", "data", "overrides"],
            [(record.get("iterations"), state, record.get("data"), "; ".join(record.get("overrides") or []))]))
    return "".join(parts) or "<p>No fitted results in this folder.</p>"


def _figures(folder):
    """HTML of every PNG in the folder (and its sub-folders), grouped into sections, embedded as base64."""
    remaining = sorted(p.relative_to(folder) for p in folder.rglob("*.png")
                       if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    html_parts = []
    for title, belongs in FIGURE_SECTIONS:
        chosen = [p for p in remaining if belongs(p)]
        remaining = [p for p in remaining if p not in chosen]
        if not chosen:
            continue
        html_parts.append(f"<h2>{title}</h2>")
        for relative in chosen:
            data = base64.b64encode((folder / relative).read_bytes()).decode("ascii")
            html_parts.append(f"<figure><img alt=\"{html.escape(str(relative))}\" src=\"data:image/png;base64,{data}\">"
                              f"<figcaption>{html.escape(str(relative))}</figcaption></figure>")
    return "".join(html_parts)


def write_report(folder, title=None):
    """Write ``report.html`` into `folder` from the files there (see module docstring).

    Parameters
    ----------
    folder : str or pathlib.Path
    title : str, optional
        Page title (default: the command of ``run.log``).

    Returns
    -------
    pathlib.Path
    """
    folder = Path(folder)
    fields, inputs = _header(folder)
    command = fields.get("command", "")
    title = title or (f"cosi-imaging: {command.split(' ', 1)[-1]}" if command else f"cosi-imaging: {folder.name}")
    input_rows = [(role, *value.split(" sha256 ")) if " sha256 " in value else (role, value, "")
                  for role, value in inputs]
    provenance = [(key, value) for key, value in fields.items()]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Command: <code>{html.escape(command)}</code></p>"
        "<h2>Inputs</h2>"
        + (_table(["role", "file", "sha256"], input_rows) if input_rows else "<p>No input files recorded.</p>")
        + "<h2>Results</h2>" + _results(folder)
        + _figures(folder)
        + "<h2>Provenance</h2>" + _table(["", ""], provenance)
        + f"<p>Report written {now}; the full log is <code>run.log</code> in this folder.</p>"
        "</body></html>\n"
    )
    path = folder / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
