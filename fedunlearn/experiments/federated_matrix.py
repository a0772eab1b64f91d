"""A scenario matrix of federated withdrawals: one base config, scenario overrides, seeds.

    kind = "federated_matrix"
    [matrix]       name, seeds, targets, parallel tasks
    [base]         a whole federated config (kind = "federated" is implied)
    [scenarios.<name>]  sections merged into the base, e.g. [scenarios.dir01.federation] alpha = 0.1

Each (scenario, seed) federation is one Ray task holding one CPU: its clients, its retraining
and every method run inside it, one after another (the in-process transport, local.py), so
wall times and speedups within a cell are measured on the same core. The report has one row
per (scenario, seed, method); a summary per method (mean and spread over the cells, the
share of cells within the targets against retrain of the same cell, and that share among the
cells where `subtract` misses the test-accuracy target); the forgetting signal (the original's
backdoor success per cell, its minimum against matrix.original_asr_bar); and a Pareto plot of
speedup against the gap to retrain in test accuracy, forget accuracy and backdoor success
(matrix_summary.py).
With matrix.retrain_twice each cell also retrains a second time from another seed (`retrain_alt`,
matrix_floor.py), judged against `retrain` like a method: the noise floor of the targets, and the
ceiling (how many cells' targets a retrained model meets at all).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


from fedunlearn.config import build, check_range, to_dict
from fedunlearn.errors import ConfigError
from fedunlearn.experiments.matrix_floor import FLOOR_COLUMNS, NAME as RETRAIN_ALT, floor_note, floor_rows, noise_floor
from fedunlearn.experiments.matrix_summary import (ROW_COLUMNS, SUMMARY_COLUMNS, cell_rows, original_asr, pareto_plot,
                                                  reach_note, signal_note, summarize)
from fedunlearn.metrics.report import markdown_table, write_report

log = logging.getLogger("fedunlearn")

@dataclass(frozen=True)
class MatrixSection:
    name: str = "withdrawal_matrix"
    seeds: tuple[int, ...] = (0, 1)
    parallel: int = 0              # federations at once; 0 = one per CPU of the Ray cluster
    test_tolerance: float = 0.02   # target: |test_acc - retrain's| <= this
    forget_margin: float = 0.03    # target: forget_acc <= retrain's + this
    backdoor_margin: float = 0.03  # target: backdoor_asr <= retrain's + this
    original_asr_bar: float = 0.8  # the forgetting signal: the original's backdoor success in every cell, at least this
    retrain_twice: bool = True     # a second retraining per cell (row retrain_alt): the targets' noise floor
    retrain_alt_seed_offset: int = 1000  # retrain_alt's seed: the cell's seed + this (any other seed would do)

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("'matrix.seeds' must list at least one seed")
        check_range("matrix.parallel", self.parallel, 0)
        check_range("matrix.original_asr_bar", self.original_asr_bar, 0.0, 1.0)
        check_range("matrix.retrain_alt_seed_offset", self.retrain_alt_seed_offset, 1)


@dataclass(frozen=True)
class Config:
    kind: str = "federated_matrix"
    matrix: MatrixSection = MatrixSection()
    base: dict = field(default_factory=dict)
    scenarios: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.scenarios:
            raise ValueError("'scenarios' must hold at least one [scenarios.<name>] section")
        for name, seed in self.cells():
            self.federation(name, seed)  # every cell's config is validated before any work starts

    def cells(self) -> list[tuple[str, int]]:
        return [(name, seed) for name in self.scenarios for seed in self.matrix.seeds]

    def federation(self, scenario: str, seed: int):
        from fedunlearn.federated.config import Config as FedConfig

        mapping = merge(copy.deepcopy(dict(self.base)), dict(self.scenarios[scenario]))
        mapping["kind"] = "federated"
        mapping.setdefault("experiment", {})
        mapping["experiment"] = {**mapping["experiment"], "seed": seed, "name": f"{scenario}-seed{seed}"}
        try:
            cfg = build(FedConfig, mapping)
        except ConfigError as err:
            raise ConfigError(f"scenario '{scenario}': {err}") from None
        if cfg.audit.models:
            raise ConfigError(f"scenario '{scenario}': the matrix does not run [audit]; audit one federated config "
                              "with `fedunlearn run CONFIG --set audit.models=N`")
        return cfg


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base`, section by section."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


class InlineServer:
    """The server's work run in the calling process: a matrix cell already holds its own CPU."""

    reserved_cpus = 1.0

    def start(self) -> "InlineServer":
        return self

    def run(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def close(self) -> None:
        pass

    def __enter__(self) -> "InlineServer":
        return self

    def __exit__(self, *exc) -> None:
        pass


def run_cell(mapping: dict, out_dir: str, alt_seed: int | None = None) -> dict:
    """One federation, start to finish, in this process (a Ray task's body); with `alt_seed` a
    second retraining from that seed follows (row retrain_alt, matrix_floor.py)."""
    import torch

    from fedunlearn.config import build
    from fedunlearn.federated.config import Config as FedConfig
    from fedunlearn.federated.driver import serve
    from fedunlearn.federated.transport import LocalTransport

    torch.set_num_threads(1)
    cfg = build(FedConfig, mapping)
    cpu, wall = time.process_time(), time.perf_counter()
    report = serve(cfg, LocalTransport(cfg), out_dir, progress=False, server=InlineServer())
    if alt_seed is not None:
        from fedunlearn.experiments.matrix_floor import retrain_alt_row

        retrain = next(r for r in report["results"] if r["method"] == "retrain")
        alt = retrain_alt_row(cfg, retrain, alt_seed, Path(out_dir) / "checkpoints")
        report = {**report, "results": [*report["results"], alt]}
    # CPU seconds as well as wall: on a shared machine the wall time says more about the neighbours
    return {**report, "cell_cpu_s": time.process_time() - cpu, "cell_wall_s": time.perf_counter() - wall}


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    import ray

    from fedunlearn.cluster.ray_env import ensure_ray

    out = Path(out_dir)
    cells = cfg.cells()
    started_ray = not ray.is_initialized()
    ensure_ray()
    start = time.perf_counter()
    try:
        limit = cfg.matrix.parallel or max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))
        task = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        pending, results = {}, {}
        todo = list(cells)
        while todo or pending:
            while todo and len(pending) < limit:
                scenario, seed = todo.pop(0)
                fed_cfg = cfg.federation(scenario, seed)
                mapping = to_dict(fed_cfg)
                # a stream of withdrawals has a retrain per request: the second retraining covers one withdrawal
                alt_seed = (seed + cfg.matrix.retrain_alt_seed_offset
                            if cfg.matrix.retrain_twice and not fed_cfg.withdrawal.requests else None)
                pending[task.remote(mapping, str(out / scenario / f"seed{seed}"), alt_seed)] = (scenario, seed)
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            results[cell] = ray.get(done[0])
            log.info("matrix cell %s seed %d done (%d/%d, %.0f s)", *cell, len(results), len(cells),
                     time.perf_counter() - start)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    rows = cell_rows(cfg, cells, results)
    summary = summarize(cfg, rows)
    floor = noise_floor(rows, cfg.matrix)
    cpu_s = sum(r.get("cell_cpu_s", 0.0) for r in results.values())
    cell_wall = sum(r.get("cell_wall_s", 0.0) for r in results.values())
    plot = pareto_plot(summary, out / "pareto.png")
    m = cfg.matrix
    alt_s = sum(r["wall_s"] for r in rows if r["method"] == RETRAIN_ALT)
    notes = [
        f"{len(cells)} federations ({len(cfg.scenarios)} scenarios x {len(m.seeds)} seeds), each a Ray task on one CPU; "
        f"wall time of the whole matrix {time.perf_counter() - start:.0f} s; the cells used {cpu_s:.0f} CPU seconds "
        f"(their wall times add up to {cell_wall:.0f} s), so on {limit} free cores the cells need about "
        f"{cpu_s / limit:.0f} s",
        f"within_target: |test_acc - retrain| <= {m.test_tolerance}, forget_acc <= retrain + {m.forget_margin}, "
        f"backdoor_asr <= retrain + {m.backdoor_margin}, and no message to the remaining clients",
        "within_target_where_subtract_misses: the same share over the cells where subtract misses the test-accuracy target",
        "gaps are method - retrain of the same cell (signed for forget and backdoor, absolute for test), then averaged; "
        "`_std` is the spread over the cells",
        signal_note(rows, m),
        reach_note(rows, m),
        floor_note(floor, m),
    ]
    if floor:
        notes.append(f"the second retrainings took {alt_s:.0f} s of the cells' {cell_wall:.0f} s wall "
                     f"({alt_s / max(cell_wall, 1e-9):.0%}); within_target_where_retrain_alt_meets: each method's "
                     "share over the cells where retrain_alt meets the targets; within_noise_floor: each "
                     "tolerance widened to retrain_alt's own gap in that cell (as close to retrain as a second "
                     "retraining is; reported beside within_target, which stays the issue's)")
    md_summary = markdown_table(summary, SUMMARY_COLUMNS)
    write_report(out, f"{m.name}: federated withdrawal matrix", to_dict(cfg), rows,
                 extra={"summary": summary, "matrix_wall_s": time.perf_counter() - start, "cells_cpu_s": cpu_s,
                        "cells_wall_s": cell_wall, "parallel": limit,
                        "original_asr": original_asr(rows, m), "noise_floor": floor},
                 notes=notes, sections=["## Summary per method (report.json's `summary`)", md_summary,
                                        *(["## Noise floor: retrain_alt against retrain per cell (report.json's "
                                           "`noise_floor`)", markdown_table(floor_rows(floor), FLOOR_COLUMNS)]
                                          if floor else [])],
                 columns=ROW_COLUMNS, plots=[str(plot)])
    return {"results": summary, "rows": rows, "columns": SUMMARY_COLUMNS}
