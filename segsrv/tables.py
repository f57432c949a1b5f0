"""Answers as aligned text tables for a terminal: the CLI's `--format table`.

Every renderer takes an answer's JSON form (what `--format json` prints), so the two formats show the
same numbers whichever backend (--local or --addr) answered. A small formatter of its own rather than a
library: no table library is a dependency, and these tables need only left-aligned text, right-aligned
numbers and one header row.
"""

from __future__ import annotations

import math

# statistics shown in scientific notation: they span hundreds of orders of magnitude
SCIENTIFIC = {"p_value", "q_value"}


def cell(value, key: str = "") -> str:
    """One value as text: thousands separators for integers, 4 significant digits for other numbers
    (p- and q-values in scientific notation), '-' for null."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if key in SCIENTIFIC:
            return f"{value:.2e}"
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v, key) for v in value)
    return str(value)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value in ("inf", "-inf")


def table(columns: list[str], rows: list[dict], indent: str = "") -> str:
    """`rows` under a header of `columns` (each row a dict keyed by them), numbers right-aligned."""
    text = [[cell(row.get(c), c) for c in columns] for row in rows]
    right = [bool(rows) and all(_numeric(row.get(c)) or row.get(c) is None for row in rows) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(list(columns))] + [line(r) for r in text]) + "\n"


def _where(answer: dict) -> str:
    return f"{answer.get('snapshot')} {answer.get('version')} / {answer.get('from')}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def relate(answer: dict) -> str:
    """A header line, then one row per hit: field, value, then the selected statistics in their order."""
    head = (f"{_where(answer)}: {answer['n_condition']:,} of {answer['n_rows']:,} rows in the condition; "
            f"{answer['n_matching']:,} of {answer['n_candidates']:,} candidate features pass; "
            f"{len(answer['hits'])} shown (plan {answer['plan']}, {answer['elapsed_ms']:.1f} ms)\n")
    if answer.get("suppressed"):
        head += "(suppressed: the condition is below the privacy floor)\n"
    hits = answer["hits"]
    if not hits:
        return head + "no hits\n"
    # "$field" / "$value" first; a plain field-name column repeats the value, so the table leaves it out
    stats = [k for k in hits[0] if k.startswith("$") and k not in ("$field", "$value")]
    rows = [{"field": h["$field"], "value": h["$value"], **{k[1:]: h[k] for k in stats}} for h in hits]
    return head + "\n" + table(["field", "value", *(k[1:] for k in stats)], rows)


def count(answer: dict) -> str:
    return (f"{answer['count']:,} of {answer['n_rows']:,} rows ({_share(answer['count'], answer['n_rows'])}) "
            f"in {_where(answer)}\n")


def _terms(pairs) -> str:
    return " AND ".join(f"{f}={v}" for f, v in pairs)


def predict(answer: dict) -> str:
    """One row per target value, with its largest factors."""
    evidence = _terms(answer["evidence"]) or "(none)"
    head = (f"{_where(answer)}: P({answer['target']} | evidence) by {answer['method']} within "
            f"{answer['n_segment']:,} rows; evidence {evidence}\n\n")
    rows = []
    for p in answer["probabilities"]:
        factors = "; ".join(f"{_terms(f['evidence'])} x{cell(f['factor'])}" for f in p["factors"][:3])
        rows.append({"value": p["value"], "probability": p["probability"], "base": p["base_probability"],
                     "largest factors": factors + (" ..." if len(p["factors"]) > 3 else "")})
    return head + table(["value", "probability", "base", "largest factors"], rows)


def score_summary(summary: dict) -> str:
    return (f"{_where(summary)}: P({summary['target']}={summary['value']}) for {summary['returned']:,} of "
            f"{summary['n_members']:,} members; mean score {cell(summary['mean_score'])}\n")


def scores(rows: list[dict]) -> str:
    """Score rows ({"id", "score"}) numbered from 1 (the rank with top_k; else the row order)."""
    return table(["#", "id", "score"], [{"#": i, **r} for i, r in enumerate(rows, 1)])


def evaluate(answer: dict) -> str:
    base = f"{cell(answer['baseline_accuracy'])} (always {answer['baseline_value']})"
    lines = [f"{_where(answer)}: {answer['target']} by {answer['method']}, trained on {answer['n_train']:,} rows, "
             f"tested on {answer['n_test']:,}",
             f"  accuracy {cell(answer['accuracy'])}   baseline {base}",
             f"  log loss {cell(answer['log_loss'])}   AUC {cell(answer['auc'])}   mean rank "
             f"{cell(answer['mean_rank'])}   geometric mean probability {cell(answer['geometric_mean_probability'])}"]
    out = "\n".join(lines) + "\n"
    if answer["calibration"]:
        out += f"\ncalibration of {answer['calibration_of']}:\n"
        out += table(["predicted_low", "predicted_high", "mean_predicted", "observed_rate", "count"],
                     answer["calibration"], indent="  ")
    return out


def profile(answer: dict) -> str:
    """Per field, its over- then under-indexed values; then the numeric summaries, segment vs population."""
    out = (f"{_where(answer)}: {answer['n_segment']:,} of {answer['n_rows']:,} rows in the segment "
           f"({_share(answer['n_segment'], answer['n_rows'])})\n")
    columns = ["field", "value", "index", "segment_count", "segment_share", "population_share", "lift", "p_value"]
    rows = [{"field": f["field"], "index": side, **v}
            for f in answer["fields"] for side in ("over", "under") for v in f[side]]
    if rows:
        out += "\n" + table(columns, rows)
    numeric = []
    for n in answer.get("numeric", []):
        for who in ("segment", "population"):
            numeric.append({"field": n["field"], "of": who, **n[who]})
    if numeric:
        keys = [k for k in numeric[0] if k not in ("field", "of")]
        out += "\n" + table(["field", "of", *keys], numeric)
    return out


def segments(answer: list[dict]) -> str:
    if not answer:
        return "no segments (publish a catalog with `segsrv segments apply`)\n"
    return table(["name", "universe", "size", "share", "priority", "description"], answer)


def assign(answer: dict) -> str:
    """One row per customer and segment it is in (or, with propensities, might be in)."""
    head = f"{answer['snapshot']} {answer['version']} / {answer['universe']}\n\n"
    rows = []
    for a in answer["assignments"]:
        who = a["id"] or "(features)"
        if not a.get("found", True):
            rows.append({"id": who, "segment": "(id not found)"})
            continue
        if not a["segments"]:
            rows.append({"id": who, "segment": "(no segment)"})
        for m in a["segments"]:
            rows.append({"id": who, "segment": m["segment"], "member": m["member"],
                         "primary": m["segment"] == a.get("primary_segment"), "propensity": m["propensity"],
                         "segment_size": m["segment_size"], "share": m["share"]})
    return head + table(["id", "segment", "member", "primary", "propensity", "segment_size", "share"], rows)


def export_summary(summary: dict) -> str:
    ranked = ", ranked" if summary["ranked"] else ""
    where = "stdout" if summary["out"] == "-" else summary["out"]
    return (f"wrote {summary['rows']:,} rows ({summary['matching']:,} matching{ranked}) as {summary['format']} to "
            f"{where} in {summary['elapsed_s']:.2f} s\n")
