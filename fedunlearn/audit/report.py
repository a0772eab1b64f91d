"""Audit rows from ensembles: U-LiRA and KLoM against the first retrain ensemble, every other
metric as mean and standard deviation over the seeds, and the plot of both against speedup.

The row `retrain` is the second retrain ensemble judged exactly like a method: the noise
floor, i.e. what "as good as retraining" looks like in this run.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedunlearn.audit.ensemble import Member, outputs_of  # noqa: E402
from fedunlearn.metrics.evaluate import Outputs  # noqa: E402
from fedunlearn.metrics.evaluate import compare_to_reference  # noqa: E402
from fedunlearn.metrics.klom import klom, margins  # noqa: E402
from fedunlearn.metrics.ulira import null_aucs, reference_offsets, scaled_confidence, ulira  # noqa: E402

AUDIT_FIELDS = ["ulira_auc", "ulira_tpr_at_1pct_fpr", "ulira_tpr_at_01pct_fpr", "klom_forget", "klom_retain", "klom_val",
                "ulira_retain_auc"]
COLUMNS = ["method", "forget", *AUDIT_FIELDS, "test_acc", "forget_acc", "mia_efficacy", "js_to_retrain",
           "avg_gap", "speedup", "wall_s", "skipped"]


def _stack(members: list[Member], part: str) -> torch.Tensor:
    return torch.stack([m.logits[part] for m in members])


def _outputs(m: Member) -> Outputs:
    return outputs_of(m.logits)


def _offsets(members: list[Member], labels: dict[str, torch.Tensor], part: str) -> np.ndarray | None:
    """U-LiRA's per-model offsets for `part`, from the held-out split no model trained on (the
    validation split, else the test set); None = from the audited samples themselves."""
    for ref in ("val", "test"):
        if ref in labels and all(ref in m.logits for m in members):
            return reference_offsets(scaled_confidence(_stack(members, ref), labels[ref]), labels[ref], labels[part])
    return None


def noise_floor_spread(first: list[Member], second: list[Member], labels: dict[str, torch.Tensor], draws: int = 20,
                       seed: int = 0) -> dict:
    """Mean and standard deviation of the U-LiRA AUC over random equal splits of the two retrain
    ensembles pooled: the range an ensemble as good as retraining falls in by chance."""
    stats = [scaled_confidence(_stack(m, "forget"), labels["forget"]) for m in (first, second)]
    offsets = [_offsets(m, labels, "forget") for m in (first, second)]
    aucs = null_aucs(*stats, draws=draws, seed=seed, offsets=None if offsets[0] is None else tuple(offsets))
    return {"ulira_null_mean": float(np.mean(aucs)), "ulira_null_sd": float(np.std(aucs))}


def audit_row(name: str, members: list[Member], reference: list[Member], labels: dict[str, torch.Tensor],
              klom_fit: str = "gaussian") -> dict:
    """One method's row: `members[i]` started from original i, `reference[i]` is retrain i."""
    members, reference = sorted(members, key=lambda m: m.index), sorted(reference, key=lambda m: m.index)
    if any(m.skipped for m in members):
        why = next(m.skipped for m in members if m.skipped)
        return {"method": name, "models": 0, **{k: float("nan") for k in AUDIT_FIELDS}, "skipped": why}
    offsets = (_offsets(members, labels, "forget"), _offsets(reference, labels, "forget"))
    offsets = None if offsets[0] is None else offsets
    attack = ulira(scaled_confidence(_stack(members, "forget"), labels["forget"]),
                   scaled_confidence(_stack(reference, "forget"), labels["forget"]), offsets=offsets)
    raw = ulira(scaled_confidence(_stack(members, "forget"), labels["forget"]),
                scaled_confidence(_stack(reference, "forget"), labels["forget"]), calibrate=False)
    row = {"method": name, "models": len(members), "ulira_auc": attack.auc,
           "ulira_tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr, "ulira_tpr_at_01pct_fpr": attack.tpr_at_01pct_fpr,
           "ulira_auc_uncalibrated": raw.auc}
    # The same attack on retain samples (which every model trained on): a method that damaged
    # or shifted what it should keep is told from retraining there too; 0.5 = untouched.
    if "retain" in labels:
        retain_offsets = (_offsets(members, labels, "retain"), _offsets(reference, labels, "retain"))
        row["ulira_retain_auc"] = ulira(scaled_confidence(_stack(members, "retain"), labels["retain"]),
                                        scaled_confidence(_stack(reference, "retain"), labels["retain"]),
                                        offsets=None if retain_offsets[0] is None else retain_offsets).auc
    else:
        row["ulira_retain_auc"] = float("nan")
    for part in ("forget", "retain", "val"):
        if part in labels:
            row[f"klom_{part}"] = klom(margins(_stack(members, part), labels[part]),
                                       margins(_stack(reference, part), labels[part]), klom_fit)
        else:
            row[f"klom_{part}"] = float("nan")  # no validation split (data.val_size = 0)
    per_seed = []
    for m, ref in zip(members, reference):
        seed_row = {**m.row, "wall_s": m.wall_s, **m.stats}
        ref_row = {**ref.row, "wall_s": ref.wall_s}
        compare_to_reference(seed_row, _outputs(m), m.state, ref_row, _outputs(ref), ref.state, ref.wall_s)
        per_seed.append(seed_row)
    for key in sorted({k for r in per_seed for k in r}):
        values = [float(r[key]) for r in per_seed if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if values:
            row[key] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values))
    return row


def tradeoff_plot(rows: list[dict], forget_label: str, path: str | Path) -> Path:
    """KLoM on the forget set and U-LiRA AUC against speedup, per method, with the retrain
    noise floor (and the original, which forgot nothing) drawn as horizontal lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = {r["method"]: r for r in rows if r["method"] in ("retrain", "original")}
    points = [r for r in rows if r["method"] not in lines and math.isfinite(r.get("speedup", float("nan")))]
    for ax, key, label in ((axes[0], "klom_forget", "KLoM, forget set (95th pct, symlog; lower is better)"),
                           (axes[1], "ulira_auc", "U-LiRA AUC, forget set (0.5 = like retraining)")):
        for r in points:
            if math.isfinite(r.get(key, float("nan"))):
                ax.errorbar(r["speedup"], r[key], xerr=r.get("speedup_std", 0.0), fmt="o", capsize=3)
                ax.annotate(r["method"], (r["speedup"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for name, style in (("retrain", "--"), ("original", ":")):
            if name in lines and math.isfinite(lines[name].get(key, float("nan"))):
                what = "retrain noise floor" if name == "retrain" else "original (no unlearning)"
                ax.axhline(lines[name][key], color="grey", linestyle=style, label=what)
        floor = lines.get("retrain", {})
        if key == "ulira_auc" and math.isfinite(floor.get("ulira_null_sd", float("nan"))):
            mean, sd = floor["ulira_null_mean"], floor["ulira_null_sd"]
            ax.axhspan(mean - 2 * sd, mean + 2 * sd, color="grey", alpha=0.15, label="retraining's range (mean +- 2 sd)")
        ax.set_xscale("log")
        if key.startswith("klom"):
            ax.set_yscale("symlog", linthresh=1.0)  # KLoM spans 0 (retrain) to thousands (no unlearning)
        ax.set_xlabel("speedup over retraining (x, log scale)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"forgetting vs cost: {forget_label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
