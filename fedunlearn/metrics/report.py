"""report.json (the resolved config, one result per method, extras) and a readable report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedunlearn import outdir
from fedunlearn.metrics.reading import is_quick, reading_notes

COLUMNS = ["method", "test_acc", "retain_acc", "forget_acc", "mia_efficacy", "mia_auc",
           "js_to_retrain", "l2_to_retrain", "avg_gap", "wall_s", "speedup"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or [c for c in COLUMNS if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [("~" if c == "speedup" and c in row and is_quick(row) else "") + _fmt(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, title: str, config: dict, results: list[dict],
                 extra: dict | None = None, notes: list[str] | None = None,
                 columns: list[str] | None = None, plots: list[str] | None = None,
                 sections: list[str] | None = None) -> Path:
    """Writes report.json and report.md into out_dir; returns the path of report.md. `sections`
    are markdown blocks (a second table, say) placed after the notes, as they are."""
    out = Path(out_dir)
    outdir.mark(out)
    if plots is not None:
        outdir.remove_stale_plots(out, plots)  # a rerun with another config must not show the old run's plots
    payload = {"title": title, "config": config, "results": results, **(extra or {})}
    (out / "report.json").write_text(json.dumps(_json_safe(payload), indent=2))
    md = [f"# {title}", "", markdown_table(results, columns), ""]
    chance = 1.0 / extra["num_classes"] if (extra or {}).get("num_classes") else None
    md += [f"- {n}" for n in [*(notes or []), *reading_notes(results, chance)]]
    for section in sections or []:
        md += ["", section]
    md += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots or []]]
    md += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    return out / "report.md"


def load_report(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        from fedunlearn.errors import FedUnlearnError
        raise FedUnlearnError(f"no report.json in '{out_dir}'; run `fedunlearn run CONFIG --out {out_dir}` first")
    return json.loads(path.read_text())
