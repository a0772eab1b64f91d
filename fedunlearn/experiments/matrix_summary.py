"""A federated matrix's judgement: each row against its cell's retrain, the summary per method,
the forgetting signal and the Pareto plot (federated_matrix.py runs the cells; matrix_floor.py
judges the second retraining).

A row is within target when its test accuracy is within matrix.test_tolerance of retrain's, its
forget accuracy and backdoor success at most retrain's plus their margins, and it sent nothing to
the remaining clients. The summary gives, per method, the mean and `_std` spread over the cells,
the share of cells within target, that share where `subtract` misses the test target, that share
where the original's test accuracy reaches retrain's less the tolerance (elsewhere a method must know
the clean task better than the model it starts from), and (with a second retraining) the share where
retrain_alt meets the targets and within the noise floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedunlearn.experiments.matrix_floor import NAME as RETRAIN_ALT

if TYPE_CHECKING:
    from fedunlearn.experiments.federated_matrix import Config, MatrixSection

ROW_COLUMNS = ["scenario", "seed", "method", "test_acc", "forget_acc", "backdoor_asr", "mia_efficacy", "wall_s",
               "speedup", "messages_to_remaining", "within_target"]
SUMMARY_COLUMNS = ["method", "cells", "test_acc", "test_acc_std", "forget_acc", "backdoor_asr", "backdoor_asr_std",
                   "backdoor_asr_min", "test_gap", "test_gap_std", "forget_gap", "forget_gap_std", "backdoor_gap",
                   "backdoor_gap_std", "speedup", "within_target", "within_target_where_subtract_misses",
                   "within_target_where_original_reaches", "within_target_where_retrain_alt_meets",
                   "within_noise_floor"]
# summarized as mean and `_std` (spread over the cells); speedup as the median, with its `_std`
SUMMARY_FIELDS = ["test_acc", "forget_acc", "backdoor_asr", "mia_efficacy", "wall_s", "test_gap", "forget_gap",
                  "backdoor_gap"]


def within_target(row: dict, ref: dict, m: MatrixSection, messages: bool = True, alt: dict | None = None) -> bool:
    """The targets against `ref` (retrain of the same cell); `messages` = False judges the model
    only (retrain_alt: a retraining talks to every remaining client by design). With `alt` (the
    cell's second retraining) each tolerance is widened to what alt itself missed by: that is
    within_noise_floor."""
    alt = ref if alt is None else alt

    def excess(key):  # how far the second retraining landed above retrain (0 without one)
        return alt.get(key, 0.0) - ref.get(key, 0.0)

    return (abs(row["test_acc"] - ref["test_acc"]) <= max(m.test_tolerance, abs(excess("test_acc")))
            and row["forget_acc"] <= ref["forget_acc"] + max(m.forget_margin, excess("forget_acc"))
            and row.get("backdoor_asr", 0.0) <= ref.get("backdoor_asr", 0.0) + max(m.backdoor_margin,
                                                                                   excess("backdoor_asr"))
            and (not messages or row.get("messages_to_remaining", 0) == 0))


def within_noise_floor(row: dict, ref: dict, alt: dict, m: MatrixSection) -> bool:
    """The targets with each tolerance widened to what a second retraining of the same cell missed
    by: |test - retrain| <= max(tolerance, |retrain_alt - retrain|), and forget / backdoor at most
    max(margin, retrain_alt's excess) above retrain; no message to the remaining clients. A
    method within it is as close to retrain as another retraining is: the matrix's targets are
    not loosened (within_target stays as the issue states it), this is reported beside them."""
    return within_target(row, ref, m, alt=alt)


def cell_rows(cfg: Config, cells, results) -> list[dict]:
    rows = []
    for scenario, seed in cells:
        cell = results[(scenario, seed)]["results"]
        ref = next(r for r in cell if r["method"] == "retrain")
        alt = next((r for r in cell if r["method"] == RETRAIN_ALT), None)
        for row in cell:
            row = {"scenario": scenario, "seed": seed, **row}
            if row["method"] not in ("original", "retrain"):
                row["within_target"] = within_target(row, ref, cfg.matrix, messages=row["method"] != RETRAIN_ALT)
                row["test_gap"] = abs(row["test_acc"] - ref["test_acc"])
                row["forget_gap"] = row["forget_acc"] - ref["forget_acc"]
                row["backdoor_gap"] = row.get("backdoor_asr", 0.0) - ref.get("backdoor_asr", 0.0)
                if alt is not None and row["method"] != RETRAIN_ALT:
                    row["within_noise_floor"] = within_noise_floor(row, ref, alt, cfg.matrix)
            rows.append(row)
    return rows


def summarize(cfg: Config, rows: list[dict]) -> list[dict]:
    subtract_misses = {(r["scenario"], r["seed"]) for r in rows
                       if r["method"] == "subtract" and r["test_gap"] > cfg.matrix.test_tolerance}
    meetable = {(r["scenario"], r["seed"]) for r in rows if r["method"] == RETRAIN_ALT and r["within_target"]}
    reached = reaching_cells(rows, cfg.matrix)
    floored = any(r["method"] == RETRAIN_ALT for r in rows)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        row = {"method": method, "cells": len(mine)}
        for key in SUMMARY_FIELDS:
            values = [r[key] for r in mine if key in r]
            if values:
                row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        if "backdoor_asr" in mine[0]:
            row["backdoor_asr_min"] = float(min(r["backdoor_asr"] for r in mine))
        if "within_target" in mine[0]:
            hard, reaching = within_over(mine, subtract_misses), within_over(mine, reached)
            speedups = [r["speedup"] for r in mine]
            row.update(speedup=float(np.median(speedups)), speedup_std=float(np.std(speedups)),
                       within_target=float(np.mean([r["within_target"] for r in mine])),
                       within_target_where_subtract_misses=float(np.mean(hard)) if hard else float("nan"),
                       cells_where_subtract_misses=len(hard),
                       within_target_where_original_reaches=float(np.mean(reaching)) if reaching else None,
                       cells_where_original_reaches=len(reaching))
            if floored and method != RETRAIN_ALT:  # share over the cells whose targets retrain_alt meets (None: none)
                ok = within_over(mine, meetable)
                row.update(within_target_where_retrain_alt_meets=float(np.mean(ok)) if ok else None,
                           cells_where_retrain_alt_meets=len(ok),
                           within_noise_floor=float(np.mean([r["within_noise_floor"] for r in mine])))
        out.append(row)
    return out


def within_over(rows: list[dict], cells: set) -> list[bool]:
    """within_target of each of `rows` (one method's) whose (scenario, seed) is in `cells`."""
    return [r["within_target"] for r in rows if (r["scenario"], r["seed"]) in cells]


def reaching_cells(rows: list[dict], m: MatrixSection) -> set:
    """The cells whose original's test accuracy is at least retrain's less the tolerance. In the
    others the attacker's steps cost the original clean accuracy that retraining does not lose, and
    a method that starts from the original and distils from it (as every source-free one does) is
    asked to know the clean task better than any model the server holds at the end."""
    original, retrain = ({(r["scenario"], r["seed"]): r["test_acc"] for r in rows if r["method"] == name}
                         for name in ("original", "retrain"))
    return {cell for cell, acc in original.items() if cell in retrain and acc >= retrain[cell] - m.test_tolerance}


def reach_note(rows: list[dict], m: MatrixSection) -> str:
    cells = {(r["scenario"], r["seed"]) for r in rows if r["method"] == "original"}
    if not cells:
        return "no original row: the cells where the original reaches retrain's test accuracy are not measured"
    short = sorted(f"{s}/seed{seed}" for s, seed in cells - reaching_cells(rows, m))
    return (f"the original's test accuracy is more than {m.test_tolerance} below retrain's in {len(short)}/{len(cells)} "
            "cells" + (f" ({', '.join(short)})" if short else "") + ": there a method must know the clean task better "
            "than the model it starts from; within_target_where_original_reaches is each method's share over the others")


def original_asr(rows: list[dict], m: MatrixSection) -> dict:
    """The forgetting signal per cell: the original's backdoor success, its minimum and the cells
    under matrix.original_asr_bar (a weak backdoor makes a method that forgot little look close)."""
    cells = {f"{r['scenario']}/seed{r['seed']}": r.get("backdoor_asr", float("nan"))
             for r in rows if r["method"] == "original"}
    if not cells:
        return {}
    weakest = min(cells, key=cells.get)
    return {"per_cell": cells, "min": cells[weakest], "min_cell": weakest, "bar": m.original_asr_bar,
            "cells_below_bar": sorted(c for c, v in cells.items() if not v >= m.original_asr_bar)}


def signal_note(rows: list[dict], m: MatrixSection) -> str:
    sig = original_asr(rows, m)
    if not sig:
        return "no original row: the forgetting signal is not measured"
    below = sig["cells_below_bar"]
    return (f"forgetting signal: the original's backdoor success is at least {sig['min']:.3f} in every cell "
            f"(lowest: {sig['min_cell']}); {len(sig['per_cell']) - len(below)}/{len(sig['per_cell'])} cells reach "
            f"the bar {sig['bar']:.2f}" + (f"; below it: {', '.join(below)}" if below else ""))


def pareto_plot(summary: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    methods = [r for r in summary if "speedup" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, label in zip(axes, ("test_gap", "forget_gap", "backdoor_gap"),
                              ("|test acc - retrain|", "forget acc - retrain", "backdoor success - retrain")):
        for r in methods:  # error bars: the spread over the cells; retrain_alt (the noise floor) a square
            ax.errorbar(r["speedup"], r[key], yerr=r.get(f"{key}_std", 0.0), capsize=3,
                        fmt="s" if r["method"] == RETRAIN_ALT else "o")
            ax.annotate(r["method"], (r["speedup"], r[key]), fontsize=7)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speedup over retrain (median over cells)")
        ax.set_ylabel(f"{label} (mean, spread over cells)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
