"""The report as one self-contained HTML file: a jinja2 template (autoescaped), the plots inline as SVG,
and every number shown also in an embedded JSON block (`<script type="application/json"
id="segsrv-report-data">`, the gathered data verbatim) for machines and tests."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jinja2

from . import plots

TEMPLATES = Path(__file__).resolve().parent / "templates"
DATA_ELEMENT_ID = "segsrv-report-data"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:,.{digits}f}"


def _percent(value) -> str:
    return "\u2013" if value is None else f"{100 * value:.1f}%"


def _json_for_script(data: dict) -> str:
    """JSON that cannot end its <script> element early: '<', '>' and '&' as \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["number"] = _number
    env.filters["percent"] = _percent
    return env


def _figures(data: dict) -> dict:
    """Every plot's SVG, keyed as the template asks for them."""
    figures = {"sizes": plots.segment_sizes(data["segments"]), "segments": [], "models": [], "drift": None}
    for seg in data["segments"]:
        profile = seg["profile"]
        figures["segments"].append({"lifts": plots.value_lifts(profile["fields"]),
                                    "stacked": plots.stacked_proportions(profile),
                                    "compactness": plots.compactness(profile["numeric"])})
    for model in data["models"]:
        figures["models"].append(plots.calibration(model["evaluation"]))
    if data["drift"]:
        figures["drift"] = plots.drift_sizes(data["drift"]["segments"])
    return figures


def render_report(data: dict) -> str:
    """The HTML text of the report of DATA (segsrv.report.gather.gather_report)."""
    template = _environment().get_template("report.html")
    return template.render(data=data, figures=_figures(data), data_json=_json_for_script(data),
                           data_element_id=DATA_ELEMENT_ID)


def write_report(data: dict, out: str | os.PathLike) -> Path:
    """Write the report atomically (a temporary file beside OUT, then renamed) and return OUT."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_report(data), encoding="utf-8")
    os.replace(tmp, out)
    return out
