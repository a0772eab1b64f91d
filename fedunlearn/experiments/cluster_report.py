"""The cluster runner's report: the one evaluation after every request, mean and std over seeds.

Every method's model after request i is judged on the samples forgotten so far (forget), a
fixed retain sample that no request touches, and the test set, and compared with `retrain`
after request i (or, when retrain runs once per continual spec, the model retrained without
every request of the spec). report.md adds a table per method for its own numbers (SISA's
retrained shards and predicted speedups, AMUN's search, parallel against one worker).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedunlearn.config import to_dict
from fedunlearn.experiments.pipeline import Reference
from fedunlearn.metrics import Splits, evaluate, markdown_table, write_report
from fedunlearn.metrics.mia import sample_feature
from fedunlearn.metrics.plots import confidence_histogram, curves

COLUMNS = ["method", "forget", "request", "test_acc", "retain_acc", "forget_acc", "mia_efficacy", "mia_auc",
           "js_to_retrain", "avg_gap", "wall_s", "speedup", "cpu_s", "cpu_speedup"]
STD_COLUMNS = ["forget_acc", "mia_auc", "avg_gap", "speedup"]
NOT_DETAILS = set(COLUMNS) | {"seed", "seeds", "requests", "l2_to_retrain"}


def _entries(name: str, s, results: dict, label: str, count: int) -> list[tuple[int, object, float, dict]]:
    """(request position, model, wall seconds, stats with cpu_s) for one method, seed and spec."""
    if name == "original":
        times = s.original_times
        return [(count - 1, s.original, times["wall_s"], {"cpu_s": times.get("cpu_s", float("nan"))})]
    done = results[name, s.seed, label]
    first = count - len(done)  # a single retrain for a continual spec stands at the last request
    return [(first + i, r["model"], r["row"]["wall_s"], {k: v for k, v in r["row"].items() if k != "wall_s"})
            for i, r in enumerate(done)]


def evaluate_runs(cfg, seeded, results, prepared, benches, device) -> tuple[list[dict], dict]:
    rows, confidences = [], {}
    for spec in cfg.experiment.forget:
        label = spec.label()
        for s in seeded:
            reqs = s.requests[label]
            splits = [Splits(retain=s.eval_retain, forget=s.data.train.subset(np.unique(np.concatenate(reqs[:i + 1]))),
                             test=s.data.test) for i in range(len(reqs))]
            # The reference after request i: retrain for request i, else the single retrain.
            retrained = {i: (model, wall_s, stats["cpu_s"])
                         for i, model, wall_s, stats in _entries("retrain", s, results, label, len(reqs))}
            ref = {}
            for i in range(len(reqs)):
                model, wall_s, cpu_s = retrained.get(i, retrained[max(retrained)])
                metrics, out = evaluate(model, splits[i], device, cfg.eval, seed=s.seed)
                ref[i] = (metrics, out, model, wall_s, cpu_s)
            judged = {}
            for name in ["retrain", "original", *cfg.method_names()[1:]]:
                for i, model, wall_s, stats in _entries(name, s, results, label, len(reqs)):
                    metrics, out = ref[i][:2] if name == "retrain" else evaluate(model, splits[i], device, cfg.eval,
                                                                                   seed=s.seed)
                    row = {"method": name, "forget": label, "request": i + 1, "requests": len(reqs), "seed": s.seed,
                           **metrics, "wall_s": wall_s, **stats, **prepared.get((name, s.seed), {})}
                    if i == 0:
                        row.update(benches.get((name, s.seed, label), {}))
                    r_metrics, r_out, r_model, r_s, r_cpu = ref[i]
                    Reference(r_metrics, r_out, r_model, r_s).judge(row, out, model)
                    if "cpu_s" in row:
                        row["cpu_speedup"] = r_cpu / row["cpu_s"]
                    if "predicted_speedup" in row:  # a method that predicts its speedup (SISA)
                        row["speedup_of_predicted"] = row["speedup"] / row["predicted_speedup"]
                    if "predicted_cpu_speedup" in row:
                        row["cpu_speedup_of_predicted"] = row["cpu_speedup"] / row["predicted_cpu_speedup"]
                    rows.append(row)
                    judged[name] = (out, splits[i])
            if s is seeded[0] and spec is cfg.experiment.forget[0]:
                confidences = {name: {part: sample_feature(getattr(out, part), getattr(sp, part).y).ravel()
                                      for part in ("forget", "retain", "test")} for name, (out, sp) in judged.items()}
    return rows, confidences


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over seeds of every number, `<key>_std` beside it (sample std; 0 for one seed)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["forget"], row["method"], row["request"]), []).append(row)
    summary = []
    for (_, _, _), group in groups.items():
        out = {"method": group[0]["method"], "forget": group[0]["forget"], "request": group[0]["request"],
               "seeds": len(group)}
        for key in group[0]:
            if key in out or key == "seed":
                continue
            values = [g.get(key) for g in group]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                arr = np.array(values, dtype=float)
                out[key] = float(arr.mean())
                if len(arr) > 1:
                    out[f"{key}_std"] = float(arr.std(ddof=1))
            else:
                out[key] = values[0] if len(set(map(str, values))) == 1 else " / ".join(map(str, values))
        summary.append(out)
    return summary


def _details(summary: list[dict]) -> list[str]:
    """One table per method of its own numbers (stats beyond the shared columns)."""
    md = []
    for method in dict.fromkeys(r["method"] for r in summary):
        mine = [r for r in summary if r["method"] == method]
        keys = [k for k in dict.fromkeys(k for r in mine for k in r)
                if k not in NOT_DETAILS and not k.endswith("_std")]
        if keys:
            md += [f"## {method}: details", "", markdown_table(mine, ["forget", "request", *keys]), ""]
    return md


def write_cluster_report(cfg, out: Path, seeded, results, prepared, benches, device, resources: str) -> dict:
    rows, confidences = evaluate_runs(cfg, seeded, results, prepared, benches, device)
    summary = summarize(rows)
    exp = cfg.experiment
    plots = [str(confidence_histogram(name, conf, out / f"confidence_{name}.png"))
             for name, conf in confidences.items()]
    notes = [f"original recipe, reused exactly by retrain: {to_dict(cfg.train)}; model {to_dict(cfg.model)}",
             f"data: {cfg.data.name}, {len(seeded[0].data.train)} training / {len(seeded[0].data.test)} test samples; "
             f"seeds {list(exp.seeds)} (mean over seeds, *_std = sample std)",
             f"Ray tasks: {resources}; grid tasks at once: {exp.parallel_runs or 'as many as fit'}, each timed "
             "inside its task; prepare steps (SISA's initial training) are not timed; benchmarks ran alone",
             "speedup = retrain wall time / method wall time for the same request, measured in this run; "
             "cpu_speedup = the same for CPU seconds (the task's and its sub-tasks'), which neighbours on a "
             "shared machine disturb far less than wall time",
             f"machine load (1-minute load average) at report time: {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} cores; "
             "wall times on a shared machine include its neighbours"]
    for spec in [sp for sp in exp.forget if sp.requests > 1]:
        ref = "retrain after every request" if exp.retrain_each_request else \
            "one retrain without all requests (evaluated on the samples forgotten so far)"
        notes.append(f"continual '{spec.label()}': {spec.requests} requests; reference: {ref}")
        series = {m: {} for m in ("avg_gap", "forget_acc", "mia_auc")}
        for method in [m for m in cfg.method_names() if m != "retrain"]:
            mine = [r for r in summary if r["forget"] == spec.label() and r["method"] == method]
            if len(mine) > 1:
                growth = mine[-1]["avg_gap"] - mine[0]["avg_gap"]
                notes.append(f"  {method}: avg_gap {mine[0]['avg_gap']:.2f} after request 1, "
                             f"{mine[-1]['avg_gap']:.2f} after request {len(mine)} (growth {growth:+.2f} points)")
                for metric in series:
                    series[metric][method] = [r[metric] for r in mine]
        if any(series["avg_gap"].values()):
            path = out / f"continual_{spec.label()}.png"
            plots.append(str(curves(series, "request", path, title=f"continual unlearning: {spec.label()}")))
    columns = COLUMNS + ([f"{c}_std" for c in STD_COLUMNS] if len(exp.seeds) > 1 else [])
    md_path = write_report(out, f"{exp.name}: unlearning on a Ray cluster, {cfg.data.name}", to_dict(cfg), summary,
                           extra={"runs": rows, "resources": resources}, notes=notes, columns=columns, plots=plots)
    with open(md_path, "a") as fh:
        fh.write("\n".join(["", *_details(summary)]))
    return {"results": summary, "config": to_dict(cfg), "columns": columns, "runs": rows}

