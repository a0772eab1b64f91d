"""Lines that tell a reader of report.md which rows to distrust and how to read avg_gap and speedup."""

from __future__ import annotations

import math

QUICK_S = 1.0  # a method faster than this: its speedup is mostly timer noise, marked with '~'


def is_quick(row: dict) -> bool:
    wall = row.get("wall_s")
    return isinstance(wall, (int, float)) and wall < QUICK_S


def collapsed(rows: list[dict], chance: float | None) -> list[tuple[str, float]]:
    """Rows whose test accuracy is NaN, near chance, or under half of retrain's: (method, test_acc)."""
    ref = next((r.get("test_acc") for r in rows if r.get("method") == "retrain"), None)
    flagged = []
    for row in rows:
        acc = row.get("test_acc")
        if row.get("method") == "retrain" or not isinstance(acc, (int, float)):
            continue
        near_chance = chance is not None and acc <= 1.2 * chance
        far_below = isinstance(ref, (int, float)) and not math.isnan(ref) and acc < 0.5 * ref
        if math.isnan(acc) or near_chance or far_below:
            flagged.append((row["method"], acc))
    return flagged


def cells(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by cell (scenario, seed) when they come from a scenario matrix, else one group."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row.get("scenario"), row.get("seed") if "scenario" in row else None), []).append(row)
    return list(groups.values())


def reading_notes(rows: list[dict], chance: float | None = None) -> list[str]:
    notes = []
    groups = cells(rows)
    where = f"chance is {chance:.3f}" if chance is not None else "retrain's test_acc is the yardstick"
    if len(groups) == 1:
        bad = collapsed(rows, chance)
        if bad:
            listed = ", ".join(f"{m} (test_acc {a:.3f})" for m, a in bad)
            notes.append(f"DIVERGED OR COLLAPSED: {listed}: test accuracy near chance or under half of retrain's "
                         f"({where}); their other numbers do not describe unlearning")
    else:  # a matrix: each cell against its own retrain, counted per method
        counts: dict[str, int] = {}
        for group in groups:
            for method, _ in collapsed(group, chance):
                counts[method] = counts.get(method, 0) + 1
        if counts:
            listed = ", ".join(f"{m} in {n}" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            notes.append(f"DIVERGED OR COLLAPSED, cells of {len(groups)}: {listed}: test accuracy near chance or "
                         f"under half of that cell's retrain ({where}); those cells' other numbers do not "
                         "describe unlearning")
    gaps = {r["method"]: r["avg_gap"] for r in rows if isinstance(r.get("avg_gap"), (int, float))}
    line = ("avg_gap: mean absolute difference from retrain over test_acc, retain_acc, forget_acc and "
            "mia_efficacy, in percentage points; 0 = retrain's numbers, lower is better")
    if "original" in gaps:
        line += (f"; the original's {gaps['original']:.2f} is the gap of doing nothing, so a method above it "
                 "ended farther from retrain than the model it started from")
    notes.append(line)
    if any(is_quick(r) and "speedup" in r for r in rows):
        notes.append(f"~ before a speedup: that method took under {QUICK_S:g} s, so the ratio is mostly timer "
                     "noise (timed once), not a measured gain")
    return notes
