"""`[audit]` in the cluster and survey kinds: their task and methods, judged by the centralized audit.

Both kinds are centralized unlearning underneath, so an audited run is fedunlearn.audit.runner's
audit of a centralized config built from theirs:
- cluster: the configured methods (SISA, AMUN, ...) on each forget spec, from experiment.seeds[0]
  (the N originals and retrains are the audit's seeds); each spec is one request;
- survey: the surveyed methods on the class and random forget sets of its parts (in OUT/forget-sets,
  one ensemble of originals for both) and the convex part's methods on logistic regression (in
  OUT/convex); the label-count study is a speedup study and is not audited.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from fedunlearn.audit.report import COLUMNS
from fedunlearn.cluster import ClusterConfig
from fedunlearn.config import to_dict
from fedunlearn.data import ForgetConfig
from fedunlearn.errors import ConfigError

log = logging.getLogger("fedunlearn")


def as_forget(spec) -> ForgetConfig:
    """A cluster ForgetSpec as the plain ForgetConfig the audit takes."""
    return ForgetConfig(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(ForgetConfig)})


def cluster_audit_config(cfg):
    """The centralized config whose audit is the cluster run's; bad combinations fail here, before Ray."""
    from fedunlearn.experiments import centralized

    exp = cfg.experiment
    continual = [spec.label() for spec in exp.forget if spec.requests > 1]
    if continual and not cfg.audit.forget:
        raise ConfigError(f"[audit] sends each forget set as one request, but forget spec(s) {', '.join(continual)} "
                          "have requests > 1; set their requests = 1 or list the forget sets in [[audit.forget]]")
    section = centralized.ExperimentSection(name=exp.name, seed=exp.seeds[0], device=exp.device, methods=exp.methods)
    # The kind's [cluster] is where its work runs; an [audit.cluster] of its own overrides it.
    where = cfg.audit.cluster if cfg.audit.cluster != ClusterConfig() else cfg.cluster
    audit = dataclasses.replace(cfg.audit, forget=cfg.audit.forget or tuple(as_forget(s) for s in exp.forget),
                                cluster=where)
    return centralized.Config(experiment=section, data=cfg.data, model=cfg.model, train=cfg.train,
                              forget=audit.forget[0], eval=cfg.eval, methods=dict(cfg.methods), audit=audit)


def audit_cluster(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    from fedunlearn.audit.runner import run_audit

    central = cluster_audit_config(cfg)
    if len(cfg.experiment.seeds) > 1:
        log.info("audit: seeds %s are replaced by the audit's %d seeds from %d", list(cfg.experiment.seeds),
                 cfg.audit.models, cfg.experiment.seeds[0])
    report = run_audit(central, out_dir, progress)
    return {**report, "config": to_dict(cfg)}


def survey_audit_configs(cfg) -> dict[str, object]:
    """Folder name -> the centralized config audited there."""
    exp, audit = cfg.experiment, cfg.audit
    forgets = []
    if "class" in exp.parts:
        forgets.append(ForgetConfig(kind="class", classes=(exp.forget_class,)))
    if "random" in exp.parts:
        forgets.append(ForgetConfig(kind="random", fraction=exp.random_fraction))
    forgets = list(audit.forget) or forgets
    parts = {}
    if forgets:
        part = cfg.part_config("audit", cfg.surveyed(), forgets[0])
        parts["forget-sets"] = dataclasses.replace(part, audit=dataclasses.replace(audit, forget=tuple(forgets)))
    if "convex" in exp.parts:
        forget = ForgetConfig(kind="random", fraction=cfg.convex.fraction)
        surveyed = cfg.surveyed()
        part = cfg.part_config("convex", ["retrain"] + [m for m in cfg.convex.methods if m in surveyed], forget,
                               convex=True)
        parts["convex"] = dataclasses.replace(part, audit=dataclasses.replace(audit, forget=(forget,), methods=()))
    if not parts:
        raise ConfigError("[audit] in a survey audits the class, random and convex parts; experiment.parts "
                          f"= {list(exp.parts)} has none of them")
    return parts


def audit_survey(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    from fedunlearn.audit.runner import run_audit
    from fedunlearn.metrics.report import write_report

    out, exp = Path(out_dir), cfg.experiment
    parts = survey_audit_configs(cfg)
    results = []
    for name, part in parts.items():
        log.info("survey audit, %s: %s", name, ", ".join(part.audit.methods or part.experiment.methods))
        report = run_audit(part, out / name, progress)
        results += [{"part": name, **row} for row in report["results"]]
    notes = [f"each part is an audit with {cfg.audit.models} models per ensemble; its report.md (with the "
             f"KLoM / U-LiRA plots against speedup) is in {', '.join(f'{p}/' for p in parts)}",
             "the row `retrain` of each forget set is the second retrain ensemble against the first: the noise floor"]
    if "labels" in exp.parts:
        notes.append("the label-count study is not audited (it measures speedup against the number of classes); "
                     "run the survey without [audit] for it")
    write_report(out, f"{exp.name}: forgetting audit of every surveyed method", to_dict(cfg), results, notes=notes,
                 columns=["part", *COLUMNS])
    return {"results": results, "config": to_dict(cfg), "columns": ["part", *COLUMNS]}
