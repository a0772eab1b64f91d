"""The matrix's noise floor: a second retraining per cell, `retrain_alt`, judged against `retrain`.

Every method in a cell is judged against ONE retrained model. In a poorly trained federation
(skewed labels, 30% of the clients per round) a second retraining from another seed can land
further from the first than a method's test-accuracy tolerance, so a cell's targets may be out
of reach for any method. `retrain_alt` measures that: the same federation, data, partition,
departing client, backdoor, rounds and client sampling as the cell's `retrain`; only the
initial model and each client's local training (data shuffling) are drawn from another seed
(the cell's seed + matrix.retrain_alt_seed_offset). It runs the audit's retraining
(audit/federated.py's retrain_remaining) inside the cell's Ray task, after the cell's methods,
on the same core, and is evaluated by the same oracle (same splits, same MIA seed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedunlearn import checkpoint
from fedunlearn.config import config_hash, to_dict

NAME = "retrain_alt"


def retrain_alt_row(cfg, retrain: dict, seed: int, ckpt: Path | None = None) -> dict:
    """The report row of a second retraining of `cfg`'s federation, its initial model and local
    training drawn from `seed` (client sampling stays the cell's). `retrain`: the cell's retrain
    row (for speedup and messages). Checkpointed under `ckpt` like the cell's methods."""
    from fedunlearn.audit.federated import probe, retrain_remaining
    from fedunlearn.experiments.pipeline import cached
    from fedunlearn.federated.client import departing_client

    cfg = dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=departing_client(cfg)))

    def work() -> dict:
        # phase "unlearn": the round config the driver's retrain method trains with, so that with
        # seed = the cell's seed this reproduces `retrain` exactly (tests/test_federated_matrix.py)
        state, wall_s, rounds, make_model = retrain_remaining(cfg, seed, sampling_seed=cfg.experiment.seed,
                                                              phase="unlearn", desc=NAME)
        row = probe(cfg, NAME, 0, state, make_model, wall_s).row
        if "backdoor_acc" in row:
            row["backdoor_asr"] = row.pop("backdoor_acc")
        return {**row, "wall_s": wall_s, "rounds": rounds, "alt_seed": seed}

    key = config_hash([to_dict(cfg), seed, checkpoint.code_key()])
    row = cached(ckpt / f"{NAME}-{key}", work) if ckpt is not None else work()
    # the same rounds and clients as retrain: it sends the remaining clients what retrain sends
    return {"method": NAME, **row, "speedup": retrain["wall_s"] / row["wall_s"] if row["wall_s"] > 0 else float("nan"),
            "messages_to_remaining": retrain.get("messages_to_remaining", 0)}


def noise_floor(rows: list[dict], m) -> dict:
    """retrain_alt against retrain per cell, for report.json's `noise_floor`: the ceiling (cells
    where a retrained model meets the targets), the |test gap| mean / max and the cells whose
    gap exceeds matrix.test_tolerance."""
    alt = {f"{r['scenario']}/seed{r['seed']}": r for r in rows if r["method"] == NAME}
    if not alt:
        return {}
    ref = {f"{r['scenario']}/seed{r['seed']}": r for r in rows if r["method"] == "retrain"}
    per_cell = {cell: {"retrain_test_acc": ref[cell]["test_acc"], "retrain_alt_test_acc": r["test_acc"],
                       "test_gap": r["test_gap"], "forget_gap": r["forget_gap"], "backdoor_gap": r["backdoor_gap"],
                       "within_target": bool(r["within_target"])} for cell, r in alt.items()}
    gaps = [c["test_gap"] for c in per_cell.values()]
    return {"cells": len(per_cell), "cells_within_target": sum(c["within_target"] for c in per_cell.values()),
            "test_gap_mean": float(np.mean(gaps)), "test_gap_max": float(np.max(gaps)),
            "test_gap_max_cell": max(per_cell, key=lambda c: per_cell[c]["test_gap"]),
            "cells_over_test_tolerance": sorted(c for c, v in per_cell.items() if v["test_gap"] > m.test_tolerance),
            "cells_missing_targets": sorted(c for c, v in per_cell.items() if not v["within_target"]),
            "per_cell": per_cell}


def floor_note(floor: dict, m) -> str:
    if not floor:
        return ("no second retraining (matrix.retrain_twice = false, or streams of withdrawals): the cells' noise "
                "floor is not measured")
    over = floor["cells_over_test_tolerance"]
    return (f"the ceiling: a retrained model (retrain_alt: another seed for the initial model and the local "
            f"training, the same data, departing client and client sampling) meets the targets in "
            f"{floor['cells_within_target']}/{floor['cells']} cells; retrain-vs-retrain |test gap| mean "
            f"{floor['test_gap_mean']:.3f}, max {floor['test_gap_max']:.3f} ({floor['test_gap_max_cell']}); "
            f"{len(over)} cell(s) over the {m.test_tolerance} tolerance" + (f": {', '.join(over)}" if over else "")
            + ". retrain_alt's within_target judges its model only, not its messages (a retraining talks to "
            "every remaining client by design)")


FLOOR_COLUMNS = ["cell", "retrain_test_acc", "retrain_alt_test_acc", "test_gap", "forget_gap", "backdoor_gap",
                 "within_target"]


def floor_rows(floor: dict) -> list[dict]:
    return [{"cell": cell, **values} for cell, values in (floor or {}).get("per_cell", {}).items()]
