"""An audited centralized run: ensembles on Ray, every method on every original, one report.

For each forget set: N originals (seeds s..s+N-1, shared by all forget sets), a first retrain
ensemble (s+N..s+2N-1: the reference) and a second (s+2N..s+3N-1: the noise floor), and each
listed method once on each original. Rows: `original` (what not forgetting looks like), each
method, and `retrain` (the second ensemble against the first, with the spread of U-LiRA's AUC
over random splits of both retrain ensembles). Every member is stored under OUT/checkpoints as
it finishes, so a rerun of an interrupted audit trains only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from fedunlearn.audit.ensemble import ORIGINAL, RETRAIN_A, RETRAIN_B, Job, Shared, fresh_model, run_members
from fedunlearn.audit.report import AUDIT_FIELDS, COLUMNS, audit_row, noise_floor_spread, tradeoff_plot
from fedunlearn import outdir
from fedunlearn.cluster import task_cpu_seconds
from fedunlearn.cluster.ray_env import ray_session
from fedunlearn.checkpoint import code_key
from fedunlearn.config import config_hash, to_dict
from fedunlearn.data import DataBundle, complement, load_dataset
from fedunlearn.data.forget_model import select_forget_for
from fedunlearn.metrics import Splits, write_report
from fedunlearn.training import get_device

log = logging.getLogger("fedunlearn")


def forget_label(f) -> str:
    if f.kind == "random" or f.kind == "atypical":
        return f"{f.kind} {f.fraction:g}"
    if f.kind == "class":
        return f"class {list(f.classes)}"
    if f.kind == "subpopulation":
        return f"subpopulation of class {list(f.classes) or '(seeded)'}"
    return f"{len(f.indices)} indices"


def _digest(data: DataBundle) -> str:
    """The data itself, so that a bundle passed in by another kind is keyed by what it holds."""
    h = hashlib.sha256()
    for part in (data.train, data.val, data.test):
        if part is not None:
            h.update(part.x.numpy().tobytes())
            h.update(part.y.numpy().tobytes())
    return h.hexdigest()[:16]


def run_audit(cfg, out_dir: str | Path, progress: bool = True, data: DataBundle | None = None) -> dict:
    """`cfg` is a centralized Config with cfg.audit.models > 0."""
    audit, seed, n = cfg.audit, cfg.experiment.seed, cfg.audit.models
    out = Path(out_dir)
    outdir.mark(out)  # it will hold checkpoints/, which --fresh may empty
    data = data if data is not None else load_dataset(cfg.data, seed)
    methods = [m for m in (audit.methods or cfg.experiment.methods) if m != "retrain"]
    forgets = audit.forget or (cfg.forget,)
    start, cpu_start = time.perf_counter(), task_cpu_seconds()
    base = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, data.train,
                  data.train, Splits(data.train, data.train, data.test), data.val)
    results, plots, sizes = [], [], {}
    ckpt = out / "checkpoints"
    # Members are stored as they finish, keyed by the code too: an interrupted audit resumes,
    # and results of other code are never reused.
    data_key = config_hash([code_key(), data.name, _digest(data), cfg.data, cfg.model, cfg.train, cfg.eval, seed])
    with ray_session(audit.cluster):
        originals = run_members([Job(ORIGINAL, i, seed + i, evaluate=False) for i in range(n)], base, {},
                                audit.cluster, progress, "originals", ckpt, data_key)
        import ray

        states = {m.index: ray.put(m.state) for m in originals}
        original_models = []
        for m in sorted(originals, key=lambda m: m.index):
            model = fresh_model(base, seed + m.index)
            model.load_state_dict(m.state)
            original_models.append(model)
        for fcfg in forgets:
            label = forget_label(fcfg)
            forget_idx = select_forget_for(data.train, fcfg, seed, lambda: original_models, get_device("cpu"))
            retain_idx = complement(len(data.train), forget_idx)
            retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
            eval_retain = retain
            if cfg.eval.eval_retain_size and len(retain) > cfg.eval.eval_retain_size:
                pick = np.random.default_rng(seed).choice(len(retain), cfg.eval.eval_retain_size, replace=False)
                eval_retain = retain.subset(np.sort(pick))
            shared = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, retain,
                            forget, Splits(eval_retain, forget, data.test), data.val, retain_idx, forget_idx,
                            audit.diagnose)
            jobs = [Job(RETRAIN_A, i, seed + n + i) for i in range(n)] + [Job(RETRAIN_B, i, seed + 2 * n + i) for i in range(n)]
            jobs += [Job(name, i, seed + i, cfg.method_config(name)) for name in methods for i in range(n)]
            jobs += [Job(ORIGINAL, i, seed + i) for i in range(n)]
            log.info("audit %s: %d forget samples; %d models to train or unlearn", label, len(forget_idx), len(jobs))
            members = run_members(jobs, shared, states, audit.cluster, progress, f"audit {label}", ckpt,
                                  config_hash([data_key, forget_idx.tolist(), audit.diagnose]))
            train_s = {m.index: m.wall_s for m in originals}
            for m in members:
                if m.role == ORIGINAL:
                    m.wall_s = train_s[m.index]
            by_role: dict[str, list] = {}
            for m in members:
                by_role.setdefault(m.role, []).append(m)
            labels = {"forget": forget.y, "retain": eval_retain.y, "test": data.test.y}
            if data.val is not None:
                labels["val"] = data.val.y
            ref = by_role[RETRAIN_A]
            rows = [audit_row(name, by_role[role], ref, labels, audit.klom_fit)
                    for name, role in [("original", ORIGINAL), *[(m, m) for m in methods], ("retrain", RETRAIN_B)]]
            rows[-1].update(noise_floor_spread(ref, by_role[RETRAIN_B], labels, seed=seed))
            for r in rows:
                r["forget"] = label
            results += rows
            sizes[label] = len(forget_idx)
            slug = label.replace(" ", "_").replace("[", "").replace("]", "").replace(",", "").replace("(", "").replace(")", "")
            plots.append(str(tradeoff_plot(rows, label, out / f"audit_{slug}.png")))
    seconds, cpu = time.perf_counter() - start, task_cpu_seconds() - cpu_start
    floor = [r for r in results if r["method"] == "retrain"]
    notes = [f"{n} models per ensemble: originals seeds {seed}..{seed + n - 1}, reference retrains "
             f"{seed + n}..{seed + 2 * n - 1}, noise-floor retrains {seed + 2 * n}..{seed + 3 * n - 1}",
             "U-LiRA and KLoM compare each row's ensemble with the reference retrains; the row `retrain` is the "
             "second retrain ensemble (the noise floor); other metrics are mean (and _std) over the seeds",
             f"forget sets: {sizes}; validation split: {len(data.val) if data.val is not None else 0} samples; "
             f"test set: {len(data.test)}",
             *[f"noise floor on {r['forget']}: U-LiRA AUC {r['ulira_auc']:.3f} (over 20 random splits of the two "
               f"retrain ensembles: {r['ulira_null_mean']:.3f} +- {r['ulira_null_sd']:.3f}), KLoM forget "
               f"{r['klom_forget']:.3f}" for r in floor],
             f"whole audit: {seconds:.0f} s wall; its Ray tasks used {cpu:.0f} s of CPU (on a shared machine, "
             f"wall time measures the neighbours too)"]
    write_report(out, f"{cfg.experiment.name}: forgetting audit on {data.name}", to_dict(cfg), results,
                 extra={"forget_sizes": sizes, "audit_fields": AUDIT_FIELDS, "wall_s": seconds, "task_cpu_s": cpu},
                 notes=notes, columns=COLUMNS, plots=plots)
    return {"results": results, "config": to_dict(cfg), "columns": COLUMNS}
