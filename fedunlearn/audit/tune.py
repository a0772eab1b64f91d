"""`fedunlearn tune CONFIG --method A --method B`: methods' settings searched with Ray Tune, scored against retraining.

Originals and a retrain ensemble per forget set are trained once (Ray tasks, as in the audit)
and shared by every method searched: they are the expensive part. The forget sets are the
config's `[[audit.forget]]` tables, else its `[forget]`. Each trial runs one method with its
settings on every original for every forget set and scores it by how far the result is from
retraining: KLoM on the forget set plus KLoM on the validation split (data.val_size), summed
over the forget sets. The test set never takes
part. The method's current settings (the config's `[methods.NAME]` or its defaults) are the
first trial, so a search can only report something at least as close to retraining. The best
settings are written as OUT/tuned_<method>.toml, and all of them together as OUT/tuned.toml.
The search space is derived from the method's Config defaults (learning rates log-uniform
over two decades around the default, epoch counts 1..2x, shares in (0, 1) uniform); a field's
`metadata={"search": (kind, low, high)}` overrides that (or `"search": None` keeps it fixed).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from fedunlearn.audit.ensemble import ORIGINAL, RETRAIN_A, Job, Shared, logits_on, run_members
from fedunlearn.errors import ConfigError
from fedunlearn.metrics.klom import klom, margins

Space = dict[str, tuple[str, float, float]]  # key -> (kind, low, high); kinds: loguniform, uniform, randint
KINDS = ("loguniform", "uniform", "randint")


def search_space(config_cls) -> Space:
    space: Space = {}
    for f in dataclasses.fields(config_cls):
        if "search" in f.metadata:  # the method says what to search (or None: keep fixed)
            if f.metadata["search"] is not None:
                kind, low, high = f.metadata["search"]
                if kind not in KINDS or not low < high:
                    raise ConfigError(f"{config_cls.__module__}.{f.name}: bad search range {f.metadata['search']}")
                space[f.name] = (kind, low, high)
            continue
        default = f.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if f.name == "lr" or f.name.endswith("_lr"):
            space[f.name] = ("loguniform", default / 10, default * 10)
        elif isinstance(default, int) and "epoch" in f.name and default >= 1:
            space[f.name] = ("randint", 1, 2 * default + 1)
        elif isinstance(default, float) and 0 < default < 1 and f.name in ("alpha", "fraction", "retain_fraction"):
            space[f.name] = ("uniform", max(0.01, default / 2), min(0.99, (1 + default) / 2))
    return space


def score_parts(method_logits: list[dict], retrain_logits: list[dict], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """KLoM of the method's models against the retrained ones on forget and validation, and their sum
    `score` (lower is better; inf when a model failed or produced non-finite outputs)."""
    parts = {}
    for part in ("forget", "val"):
        if any(part not in m for m in method_logits):
            return {"klom_forget": math.inf, "klom_val": math.inf, "score": math.inf}
        a = margins(torch.stack([m[part] for m in method_logits]), labels[part])
        b = margins(torch.stack([m[part] for m in retrain_logits]), labels[part])
        parts[f"klom_{part}"] = klom(a, b)
    total = parts["klom_forget"] + parts["klom_val"]
    parts["score"] = total if math.isfinite(total) else math.inf
    return parts


def score(method_logits: list[dict], retrain_logits: list[dict], labels: dict[str, torch.Tensor]) -> float:
    """KLoM(forget) + KLoM(val) of the method's models against the retrained ones (lower is better)."""
    return score_parts(method_logits, retrain_logits, labels)["score"]


def trial(params: dict, method: str, base_cfg, shared: Shared, originals: list[dict], retrain_logits: list[dict],
          labels: dict, seeds: list[int] | None = None) -> dict[str, float]:
    """Plain function: the method with `params` on each original, scored against retraining.

    `seeds[i]` is original i's training seed (methods such as unrolling_sgd rebuild its initial
    weights from it). Only forget and validation logits are computed: a trial needs nothing else.
    Returns score_parts' KLoMs plus `val_acc`, the method's mean validation accuracy (a collapse
    shows there at once)."""
    from fedunlearn.audit.ensemble import _unlearn
    from fedunlearn.cluster.ray_env import worker_device
    from fedunlearn.config import build
    from fedunlearn.unlearn import METHODS

    cfg = build(METHODS.get(method).Config, {**dataclasses.asdict(base_cfg), **params}, f"methods.{method}")
    device = worker_device()
    logits = []
    for i, state in enumerate(originals):
        job = Job(method, i, seeds[i] if seeds else i, cfg)
        try:
            model, _, _ = _unlearn(job, shared, state, device)
        except Exception:  # noqa: BLE001 -- a setting the method refuses or breaks on scores inf, the search goes on
            logits.append({})
            continue
        logits.append({"forget": logits_on(model, shared.forget, device), "val": logits_on(model, shared.val, device)})
    result = score_parts(logits, retrain_logits, labels)
    accs = [float((m["val"].argmax(1) == labels["val"]).float().mean()) for m in logits if "val" in m]
    result["val_acc"] = sum(accs) / len(accs) if len(accs) == len(logits) else 0.0
    return result


def _tune_space(space: Space):
    from ray import tune

    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    return {k: kinds[kind](lo, hi) for k, (kind, lo, hi) in space.items()}


def require_tune():
    try:
        import ray.tune  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"`fedunlearn tune` needs Ray Tune's extra packages ({err}); install them with "
                          "pip install 'ray[tune]==2.55.1'") from None


def _objective(params, cells: list[tuple[Shared, list[dict], dict]], **kw) -> dict[str, float]:
    """One trial over every forget set: KLoMs summed (each set counts), validation accuracy averaged."""
    results = [trial(params, shared=shared, retrain_logits=retrain_logits, labels=labels, **kw)
               for shared, retrain_logits, labels in cells]
    total = {key: sum(r[key] for r in results) for key in ("score", "klom_forget", "klom_val")}
    total["val_acc"] = sum(r["val_acc"] for r in results) / len(results)
    return total


def tune_methods(cfg, methods: list[str], out_dir: str | Path, samples: int = 8, models: int = 3,
                 command: str = "") -> list[Path]:
    """Search each method's settings against ONE set of originals and retrains (trained once, shared
    by every method's trials); writes OUT/tuned_<method>.toml per method and OUT/tuned.toml with all."""
    require_tune()
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from fedunlearn.audit.ensemble import fresh_model
    from fedunlearn.cluster.ray_env import ray_session
    from fedunlearn.data import complement, load_dataset
    from fedunlearn.data.forget_model import select_forget_for
    from fedunlearn.metrics import Splits

    if cfg.data.val_size == 0:
        raise ConfigError("tuning scores on a validation split; set data.val_size (e.g. --set data.val_size=500)")
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"name each method to tune once, got {methods}")
    if samples < 1 or models < 2:
        raise ConfigError(f"tune needs --samples >= 1 and --models >= 2 (KLoM fits a spread), got {samples}, {models}")
    spaces = {}
    for method in methods:
        base_cfg = cfg.method_config(method)
        spaces[method] = (base_cfg, search_space(type(base_cfg)))
        if not spaces[method][1]:
            raise ConfigError(f"method '{method}' has no numeric settings to search")
    seed = cfg.experiment.seed
    seeds = [seed + i for i in range(models)]
    data = load_dataset(cfg.data, seed)
    base = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, data.train,
                  data.train, Splits(data.train, data.train, data.test), data.val)
    out = Path(out_dir)
    paths = []
    with ray_session(cfg.audit.cluster):
        originals = sorted(run_members([Job(ORIGINAL, i, seeds[i], evaluate=False) for i in range(models)], base, {},
                                       cfg.audit.cluster, desc="originals"), key=lambda m: m.index)
        models_ = []
        for m in originals:
            model = fresh_model(base, seeds[m.index])
            model.load_state_dict(m.state)
            models_.append(model)
        cells, where = [], []
        for spec in cfg.audit.forget or (cfg.forget,):  # the audit's forget sets, else [forget]
            forget_idx = select_forget_for(data.train, spec, seed, lambda: models_, "cpu")
            retain_idx = complement(len(data.train), forget_idx)
            retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
            shared = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, retain,
                            forget, Splits(retain, forget, data.val), data.val, retain_idx, forget_idx)
            retrains = run_members([Job(RETRAIN_A, i, seed + models + i) for i in range(models)], shared, {},
                                   cfg.audit.cluster, desc="retrains")
            cells.append((shared, [m.logits for m in retrains], {"forget": forget.y, "val": data.val.y}))
            label = spec.kind + (f" of class {', '.join(map(str, spec.classes))}" if spec.classes else "")
            where.append(f"{label} ({len(forget_idx)} samples)")
        where = f"forget sets: {', '.join(where)}; originals from seed {seed}"
        for method in methods:
            base_cfg, space = spaces[method]
            current = {k: getattr(base_cfg, k) for k in space}  # the config's own values are trial 1
            objective = tune.with_parameters(_objective, method=method, base_cfg=base_cfg, cells=cells,
                                             originals=[m.state for m in originals], seeds=seeds)
            search = BasicVariantGenerator(points_to_evaluate=[current], random_state=seed)  # seeded draws
            tuner = tune.Tuner(objective, param_space=_tune_space(space),
                               tune_config=tune.TuneConfig(metric="score", mode="min", num_samples=samples,
                                                           search_alg=search),
                               run_config=tune.RunConfig(name=f"tune-{method}", storage_path=str(out.resolve() / "tune")))
            results = tuner.fit()
            best = results.get_best_result()
            start = next((r.metrics for r in (results[i] for i in range(len(results)))
                          if r.config and all(r.config.get(k) == v for k, v in current.items())), None)
            paths.append(write_section(out, method, {k: best.config[k] for k in space}, best.metrics, samples, models,
                                       command=command, where=where, start=start))
    (out / "tuned.toml").write_text("\n".join(p.read_text() for p in paths))
    return paths


def write_section(out_dir: str | Path, method: str, params: dict[str, Any], best: float | dict, samples: int, models: int,
                  command: str = "", where: str = "", start: dict | None = None) -> Path:
    """OUT/tuned_<method>.toml: the best settings, with comments naming the search and its scores."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = best if isinstance(best, dict) else {"score": best}
    lines = [f"# searched by `fedunlearn tune` ({samples} trials, {models} originals and retrains"
             f"{'; ' + where if where else ''}): KLoM(forget) + KLoM(val) against retraining = {metrics['score']:.4f}"]
    if "klom_forget" in metrics:
        lines.append(f"# (forget {metrics['klom_forget']:.3f}, val {metrics['klom_val']:.3f}, "
                     f"val accuracy {metrics.get('val_acc', float('nan')):.3f})")
    if start and "score" in start:
        lines.append(f"# the settings it started from scored {start['score']:.4f} "
                     f"(val accuracy {start.get('val_acc', float('nan')):.3f})")
    if command:
        lines.append(f"#   {command}")
    lines.append(f"[methods.{method}]")
    for key, value in sorted(params.items()):
        lines.append(f"{key} = {value!r}" if not isinstance(value, float) else f"{key} = {value:.6g}")
    path = out / f"tuned_{method}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
