"""The oracle's judgement of every method, and the report: table, notes and curves over rounds.

The oracle is not the server: it rebuilds every client's data (as only an evaluator outside
the federation could) to measure retain accuracy on the remaining clients' data, forget
accuracy and MIA on the departing client's data, and backdoor success on triggered test
inputs. It reuses the one evaluation of fedunlearn.metrics and compares each model with
`retrain` from the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedunlearn.config import to_dict
from fedunlearn.data import ArrayDataset, triggered_test
from fedunlearn.federated.client import departing_client, federation_data, local_data
from fedunlearn.experiments.pipeline import evaluate_against_reference
from fedunlearn.metrics import Splits, write_report
from fedunlearn.metrics.plots import curves
from fedunlearn.training import predict_probs

COLUMNS = ["method", "test_acc", "retain_acc", "forget_acc", "backdoor_asr", "mia_efficacy", "mia_auc",
           "js_to_retrain", "avg_gap", "wall_s", "speedup", "rounds", "messages_to_remaining", "bytes_to_remaining"]


def oracle_splits(cfg) -> Splits:
    data, parts = federation_data(cfg)
    seed = cfg.experiment.seed
    departing = departing_client(cfg)
    forget = local_data(cfg, departing).train
    others = np.sort(np.concatenate([p for c, p in enumerate(parts) if c != departing]))
    size = cfg.eval.eval_retain_size
    if size and len(others) > size:
        others = np.sort(np.random.default_rng(seed).choice(others, size, replace=False))
    extra = {}
    if cfg.backdoor.fraction > 0:
        extra["backdoor"] = ArrayDataset(*triggered_test(data.test.x, data.test.y, cfg.backdoor))
    return Splits(retain=data.train.subset(others), forget=forget, test=data.test, extra=extra)


CURVE_SAMPLES = 1000  # test and triggered inputs per curve point: one point per round per method adds up


def curve_sets(splits: Splits, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    def sample(data: ArrayDataset) -> ArrayDataset:
        if len(data) <= CURVE_SAMPLES:
            return data
        return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), CURVE_SAMPLES, replace=False)))
    backdoor = (splits.extra or {}).get("backdoor")
    return sample(splits.test), (sample(backdoor) if backdoor is not None else None)


def quick_point(model, test: ArrayDataset, backdoor: ArrayDataset | None, device) -> tuple[float, float]:
    """(test accuracy, backdoor success) of one model on the curve samples."""
    def acc(data: ArrayDataset) -> float:
        return float((predict_probs(model, data, device).argmax(1) == data.y).float().mean())
    return acc(test), (acc(backdoor) if backdoor is not None else float("nan"))


def _num_classes(model, data, device) -> int:
    """The width of the model's output: what "chance" means for the collapsed-row check."""
    with torch.no_grad():
        return int(model(data.x[:1].to(device)).shape[1])


def write_federated_report(cfg, out: Path, trained: dict, results: dict, make_model, device) -> dict:
    splits = oracle_splits(cfg)
    seed = cfg.experiment.seed

    def model_of(state):
        model = make_model()
        model.load_state_dict(state)
        return model.to(device).eval()

    entries = [("retrain", results["retrain"]), ("original", {"state": trained["global_state"], "row": {
        "wall_s": trained["wall_s"], "rounds": cfg.train_rounds}})]
    entries += [(name, res) for name, res in results.items() if name != "retrain"]
    rows = [row for row, _ in evaluate_against_reference(
        ((name, model_of(res["state"]), res["row"]) for name, res in entries), splits, device, cfg.eval, seed,
        rename={"backdoor_acc": "backdoor_asr"})]
    next(r for r in rows if r["method"] == "original").pop("speedup")  # training, not unlearning: no speedup
    order = ["original", "retrain", *[n for n in results if n != "retrain"]]
    rows.sort(key=lambda r: order.index(r["method"]))

    plot = plot_curves(cfg, out, trained, results, splits, model_of, device)
    history = trained["history"]
    extra = {"history_bytes": history.nbytes(), "stored_rounds": [r.round for r in history.rounds],
             "model_bytes": trained["model_bytes"], "train_failures": trained["failures"],
             "round_log": trained.get("round_log", []), "unlearn_round_log": trained.get("unlearn_log", []),
             "purge": trained.get("purge", {}),
             "client_samples": {str(c): len(p) for c, p in enumerate(federation_data(cfg)[1])},
             "departing_client": departing_client(cfg), "device": str(device),
             "num_classes": _num_classes(model_of(trained["global_state"]), splits.test, device)}
    fed = cfg.federation
    notes = [
        f"{fed.num_clients} clients ({fed.partition}{', alpha ' + str(fed.alpha) if fed.partition == 'dirichlet' else ''}), "
        f"{cfg.train_rounds} FedAvg rounds of {fed.local.epochs} local epoch(s); client {departing_client(cfg)} withdraws "
        f"({len(splits.forget)} samples, {cfg.backdoor.fraction:.0%} backdoored, target {cfg.backdoor.target})",
        f"the server stored client updates of rounds {extra['stored_rounds']}: {history.nbytes() / 1e6:.1f} MB "
        f"(one model: {trained['model_bytes'] / 1e6:.2f} MB)",
        "evaluation is an oracle outside the federation (it rebuilds every client's data): retain_acc on the remaining "
        "clients' data, forget_acc and MIA on the departing client's data, backdoor_asr on triggered test inputs",
        "rounds / messages_to_remaining / bytes_to_remaining: what each method sent the remaining clients while "
        "unlearning (model arrays); speedup = retrain wall time / method wall time in this run",
        "simulated clients share the machine's cores, so wall time flatters no one only next to rounds and messages",
    ]
    notes.append(forgotten(rows, departing_client(cfg), len(splits.forget), cfg.backdoor.fraction > 0))
    repeated = [f"{r['method']} {r['wall_s']:.2f} s (median of {r['wall_repeats']}, spread {r['wall_s_spread']:.2f} s)"
                for r in rows if r.get("wall_repeats", 1) > 1]
    if repeated:  # one short timing on a shared machine is mostly noise (driver.timed_method)
        notes.append(f"wall_s of a method faster than {cfg.experiment.repeat_below_s:g} s is the median of repeated "
                     "runs, each on a fresh context: " + "; ".join(repeated))
    reused = [f"{r['method']} ({r['reused_s']:.2f} s)" for r in rows if r.get("reused_s")]
    if reused:  # FedContext.reused: both source-free modes start with the same repair
        notes.append("server work done once for this withdrawal and reused, its time counted in each wall_s: "
                     + "; ".join(reused))
    if trained["failures"]:
        notes.append(f"client failures during training (round, client), left out of those rounds: {trained['failures']}")
    for row in trained.get("round_log", []) + trained.get("unlearn_log", []):
        if row["failed"]:
            notes.append(f"{row['phase']} round {row['round']} used {row['used']} of {row['sent']} clients; "
                         + "; ".join(f"client {c}: {cause}" for c, cause in row["failed"].items()))
    if trained.get("purge", {}).get("purged"):
        notes.append(f"client {cfg.withdrawal.client}'s stored updates were deleted after the withdrawal "
                     "(history and training checkpoint); the run's deletions.jsonl records it")
    write_report(out, f"{cfg.experiment.name}: federated client withdrawal", to_dict(cfg), rows, extra=extra,
                 notes=notes, columns=COLUMNS, plots=[str(plot)])
    return {"results": rows, "config": to_dict(cfg), "columns": COLUMNS, **extra}


def plot_curves(cfg, out: Path, trained, results, splits, model_of, device) -> Path:
    """Test accuracy and backdoor success per round (on CURVE_SAMPLES inputs): training, then each
    method after the withdrawal; retrain's own rounds start again from round 1."""
    test, backdoor = curve_sets(splits, cfg.experiment.seed)
    point = lambda state: quick_point(model_of(state), test, backdoor, device)  # noqa: E731
    withdraw_at = cfg.train_rounds
    base = [point(s) for s in trained["curve"]]
    series: dict[str, dict] = {"test_acc": {}, "backdoor_asr": {}}

    def add(label, xs, pts):
        series["test_acc"][label] = (list(xs), [p[0] for p in pts])
        series["backdoor_asr"][label] = (list(xs), [p[1] for p in pts])

    add("training (all clients)", range(1, withdraw_at + 1), base)
    for name, res in results.items():
        pts = [point(s) for s in res["curve"]] or [point(res["state"])]
        if name == "retrain":
            add("retrain (from round 0)", range(1, len(pts) + 1), pts)
            continue
        pts[-1] = point(res["state"])
        xs = [withdraw_at + i + 1 for i in range(len(res["curve"]))] or [withdraw_at + 0.5]
        add(f"{name} ({res['row']['rounds']} rounds)", [withdraw_at, *xs], [base[-1], *pts])
    out.mkdir(parents=True, exist_ok=True)
    return curves(series, "federated round", out / "curves.png", marker_x=withdraw_at,
                  title=f"client {departing_client(cfg)} withdraws after round {withdraw_at}")




def forgotten(rows: list[dict], client: int, samples: int, backdoor: bool, tolerance: float = 0.02,
              margin: float = 0.03) -> str:
    """One paragraph: what the departing client taught (original against retrain) and which
    methods removed it (within `margin` of retrain's forget accuracy and backdoor success, and
    within `tolerance` of its test accuracy)."""
    by = {r["method"]: r for r in rows}
    orig, ref = by["original"], by["retrain"]
    taught = (f"forget accuracy {orig['forget_acc']:.3f} -> {ref['forget_acc']:.3f} on its data"
              + (f", backdoor success {orig['backdoor_asr']:.1%} -> {ref['backdoor_asr']:.1%}" if backdoor else "")
              + f", test accuracy {orig['test_acc']:.3f} -> {ref['test_acc']:.3f}")
    good, kept, lost = [], [], []
    for name, r in by.items():
        if name in ("original", "retrain"):
            continue
        still = (r["forget_acc"] > ref["forget_acc"] + margin
                 or (backdoor and r.get("backdoor_asr", 0.0) > ref.get("backdoor_asr", 0.0) + margin))
        if still:
            kept.append(name)
        elif abs(r["test_acc"] - ref["test_acc"]) > tolerance:
            lost.append(name)
        else:
            good.append(name)
    say = lambda names: ", ".join(names) if names else "none"  # noqa: E731
    return (f"What was forgotten: client {client} ({samples} samples) taught the federation what retraining "
            f"without it shows ({taught}). Removed it and kept test accuracy within {tolerance:.0%} of "
            f"retrain: {say(good)}. Still hold more of it than retrain (forget accuracy or backdoor success "
            f"above retrain + {margin:.0%}): {say(kept)}. Removed it but lost test accuracy: {say(lost)}.")
