"""The survey: every registered method side by side, judged by the one evaluation.

Four parts, each a centralized run (centralized.run: same training, checkpoints, evaluation)
in its own folder under OUT:
- class/   forgetting one whole class;
- random/  forgetting a random share of the training set (class-only methods are skipped);
- convex/  logistic regression on fixed features, where exact retraining is well defined: the
           Newton-type methods and DeltaGrad against `retrain`, with a second retrain from
           another seed as the noise floor of l2_to_retrain;
- labels-K/ the label-count study: the first K classes only (same samples per class), forgetting
           one class, for each K; how speedup and accuracy move with the number of classes.
OUT/report.md holds every table, which methods keep test accuracy and which forget, and the
label-count plot; OUT/report.json has every row (with its "part").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from fedunlearn.audit.config import AuditConfig
from fedunlearn.config import check_range, to_dict
from fedunlearn.contract import class_forgetting_only
from fedunlearn.data import DataBundle, DataConfig, ForgetConfig, load_dataset
from fedunlearn.errors import ConfigError
from fedunlearn.experiments import centralized
from fedunlearn.metrics import EvalConfig, markdown_table
from fedunlearn.metrics.plots import curves
from fedunlearn.metrics.report import write_report
from fedunlearn.models import ModelConfig
from fedunlearn.training import TrainConfig
from fedunlearn.unlearn import METHODS

log = logging.getLogger("fedunlearn")
COLUMNS = ["method", "test_acc", "retain_acc", "forget_acc", "mia_efficacy", "js_to_retrain", "l2_to_retrain",
           "avg_gap", "wall_s", "speedup", "keeps_test_acc", "forget_gap_closed"]
CONVEX_COLUMNS = ["dist_to_optimum", "dist_to_exact_newton", "hessian_rel_error"]


@dataclass(frozen=True)
class SurveySection:
    name: str = "survey"
    seed: int = 0
    device: str = "auto"
    exclude: tuple[str, ...] = ()          # registry methods left out of every part (to fit a time budget)
    parts: tuple[str, ...] = ("class", "random", "convex", "labels")
    forget_class: int = 0
    random_fraction: float = 0.1
    keep_tolerance: float = 0.03           # "keeps test accuracy": within this of retrain's

    def __post_init__(self):
        unknown = set(self.parts) - {"class", "random", "convex", "labels"}
        if unknown:
            raise ValueError(f"unknown survey part(s) {sorted(unknown)}; valid: class, random, convex, labels")
        check_range("random_fraction", self.random_fraction, 0.0, 1.0)
        check_range("keep_tolerance", self.keep_tolerance, 0.0, 1.0)


@dataclass(frozen=True)
class ConvexSection:
    data: DataConfig = DataConfig(train_size=6000, test_size=2000)
    model: ModelConfig = ModelConfig(name="logistic", pool=2)
    train: TrainConfig = TrainConfig(epochs=40, batch_size=512, lr=1.0, weight_decay=5e-3)
    fraction: float = 0.1
    methods: tuple[str, ...] = ("certified_removal", "newton_source_free", "sekhari", "deltagrad")
    method_settings: dict = field(default_factory=dict)  # [convex.method_settings.<name>]: over [methods.<name>]


@dataclass(frozen=True)
class LabelSection:
    counts: tuple[int, ...] = (2, 4, 6, 8, 10)
    per_class: int = 300                   # training samples per class, so the set grows with the classes
    methods: tuple[str, ...] = ()          # () = every surveyed method

    def __post_init__(self):
        if not self.counts or min(self.counts) < 2:
            raise ValueError("'labels.counts' needs label counts >= 2, e.g. [2, 4, 6, 8, 10]")
        check_range("labels.per_class", self.per_class, 1)


@dataclass(frozen=True)
class Config:
    kind: str = "survey"
    experiment: SurveySection = SurveySection()
    data: DataConfig = DataConfig(train_size=6000, test_size=2000)
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    convex: ConvexSection = ConvexSection()
    labels: LabelSection = LabelSection()
    methods: dict = field(default_factory=dict)  # [methods.<name>]: that method's Config, in every part
    audit: AuditConfig = AuditConfig()  # [audit] models = N > 0: the parts as ensemble audits (audit/kinds.py)

    def __post_init__(self):
        for name in [*self.experiment.exclude, *self.convex.methods, *self.labels.methods]:
            METHODS.check(name)
        self.part_config("class", self.surveyed())  # validates every [methods.<name>] section now
        self.part_config("convex", ["retrain", *self.convex.methods], convex=True)
        if "labels" in self.experiment.parts and self.experiment.forget_class >= min(self.labels.counts):
            raise ConfigError(f"experiment.forget_class = {self.experiment.forget_class} is not among the first "
                              f"{min(self.labels.counts)} classes the label-count study keeps")
        if self.audit.models:
            from fedunlearn.audit.kinds import survey_audit_configs

            survey_audit_configs(self)  # an audit that cannot run fails now, not after Ray starts

    def surveyed(self) -> list[str]:
        """Whatever the registry holds at run time, minus the exclusions; retrain first."""
        return ["retrain"] + [m for m in METHODS.names() if m != "retrain" and m not in self.experiment.exclude]

    def part_config(self, part: str, methods, forget: ForgetConfig | None = None, convex: bool = False):
        exp = self.experiment
        section = centralized.ExperimentSection(name=f"{exp.name}-{part}", seed=exp.seed, device=exp.device,
                                                methods=tuple(methods), noise_floor=convex)
        src = self.convex if convex else self
        settings = dict(self.methods)
        for name, values in (self.convex.method_settings.items() if convex else ()):
            settings[name] = {**settings.get(name, {}), **values}
        return centralized.Config(experiment=section, data=src.data, model=src.model, train=src.train,
                                  forget=forget or ForgetConfig(kind="class", classes=(exp.forget_class,)),
                                  eval=self.eval, methods=settings)


def class_subset(bundle: DataBundle, count: int, per_class: int, seed: int) -> DataBundle:
    """The first `count` classes, `per_class` seeded training samples of each, and their test samples."""
    if count < 2 or count > bundle.num_classes:
        raise ValueError(f"label count {count} must be in [2, {bundle.num_classes}]")
    rng = np.random.default_rng(seed)
    labels = bundle.train.y.numpy()
    picks = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(count)]
    test = np.flatnonzero(bundle.test.y.numpy() < count)
    return DataBundle(f"{bundle.name}[classes 0-{count - 1}]", bundle.train.subset(np.concatenate(picks)),
                      bundle.test.subset(test), count)


def judge(rows: list[dict], tolerance: float, forget_size: int) -> list[str]:
    """Adds the honest verdicts to each row (keeps test accuracy vs retrain; share of the forget gap closed).

    Returns a caveat when the original and retrain barely differ on the forget set (random forgetting
    on a model that generalises): then the share of that gap closed is sampling noise.
    """
    by = {r["method"]: r for r in rows}
    ref, orig = by["retrain"]["forget_acc"], by["original"]["forget_acc"]
    gap = orig - ref
    for row in rows:
        row["keeps_test_acc"] = "yes" if row["test_acc"] >= by["retrain"]["test_acc"] - tolerance else "no"
        row["forget_gap_closed"] = 1 - abs(row["forget_acc"] - ref) / abs(gap) if gap else float("nan")
    noise = math.sqrt((orig * (1 - orig) + ref * (1 - ref)) / max(forget_size, 1))
    if abs(gap) < 3 * noise:
        return [f"original and retrain differ by only {abs(gap):.3f} in forget accuracy (standard error {noise:.3f}): "
                "forget_gap_closed is noise here; compare avg_gap, mia_efficacy and js_to_retrain instead"]
    return []


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    if cfg.audit.models > 0:
        from fedunlearn.audit.kinds import audit_survey

        return audit_survey(cfg, out_dir, progress)
    out, exp = Path(out_dir), cfg.experiment
    surveyed, results, sections, plots = cfg.surveyed(), [], [], []

    def part(name: str, part_cfg, data=None) -> tuple[list[dict], list[str]]:
        log.info("survey part %s: %s", name, ", ".join(part_cfg.method_names()))
        report = centralized.run(part_cfg, out / name, progress, data=data)
        rows = report["results"]
        caveats = judge(rows, exp.keep_tolerance, report["forget_size"])
        results.extend({"part": name, **row} for row in rows)
        return rows, caveats

    if "class" in exp.parts:
        rows, caveats = part("class", cfg.part_config("class", surveyed))
        sections.append(_section(f"Class forgetting (class {exp.forget_class})", rows, caveats))
    if "random" in exp.parts:
        methods = [m for m in surveyed if not class_forgetting_only(METHODS.get(m))]
        forget = ForgetConfig(kind="random", fraction=exp.random_fraction)
        rows, caveats = part("random", cfg.part_config("random", methods, forget))
        skipped = sorted(set(surveyed) - set(methods))
        if skipped:
            caveats.append(f"skipped (class forgetting only): {', '.join(skipped)}")
        sections.append(_section(f"Random forgetting ({exp.random_fraction:.0%} of the training set)", rows, caveats))
    if "convex" in exp.parts:
        methods = ["retrain"] + [m for m in cfg.convex.methods if m in surveyed]
        forget = ForgetConfig(kind="random", fraction=cfg.convex.fraction)
        rows, caveats = part("convex", cfg.part_config("convex", methods, forget, convex=True))
        sections.append(_section("Convex case: logistic regression on fixed features", rows,
                                 caveats + _convex_notes(rows), COLUMNS + CONVEX_COLUMNS))
    if "labels" in exp.parts:
        methods = [m for m in (cfg.labels.methods or surveyed) if m in surveyed]
        full = load_dataset(cfg.data, exp.seed)
        study = []
        for count in cfg.labels.counts:
            bundle = class_subset(full, count, cfg.labels.per_class, exp.seed)
            rows, _ = part(f"labels-{count}", cfg.part_config(f"labels-{count}", methods), data=bundle)
            study += [{"classes": count, **r} for r in rows if r["method"] != "original"]
        section, plot = _label_study(study, cfg.labels.counts, out)
        sections.append(section)
        plots.append(plot)

    notes = ["Each part is a centralized run in its own folder (report.md, confidence plots, checkpoints); "
             "every method's own numbers (residuals, fallbacks, epsilons) are in report.json.",
             f"keeps_test_acc: test accuracy within {exp.keep_tolerance:.0%} of retrain's; forget_gap_closed: "
             "1 - |forget_acc - retrain's| / |original's - retrain's| (1 = forgets like retraining, 0 = like "
             "the original)."]
    title = f"{exp.name}: every method side by side"
    write_report(out, title, to_dict(cfg), results, columns=["part"] + COLUMNS)  # report.json
    md = [f"# {title}", "\n".join(f"- {n}" for n in notes), *sections,
          *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    (out / "report.md").write_text("\n\n".join(md) + "\n")  # one table per part, not one long table
    return {"results": results, "config": to_dict(cfg), "columns": ["part"] + COLUMNS}


def _section(title: str, rows: list[dict], notes=(), columns=COLUMNS) -> str:
    keep = [r["method"] for r in rows if r["keeps_test_acc"] == "yes" and r["method"] != "original"]
    lose = [r["method"] for r in rows if r["keeps_test_acc"] == "no"]
    forget = [r["method"] for r in rows if r["forget_gap_closed"] >= 0.5 and r["method"] != "retrain"]
    lines = [f"## {title}", "", markdown_table(rows, [c for c in columns if any(c in r for r in rows)]), "",
             f"- keep test accuracy: {', '.join(keep) or 'none'}",
             f"- lose test accuracy: {', '.join(lose) or 'none'}",
             f"- close at least half the forget-accuracy gap to retrain: {', '.join(forget) or 'none'}"]
    return "\n".join(lines + [f"- {n}" for n in notes])


def _convex_notes(rows: list[dict]) -> list[str]:
    by = {r["method"]: r for r in rows}
    floor = by.get(centralized.NOISE_FLOOR, {}).get("l2_to_retrain", float("nan"))
    notes = [f"noise floor: two retrains from different seeds are {floor:.4f} apart (L2)"]
    for name, row in by.items():
        if name not in ("original", "retrain", centralized.NOISE_FLOOR):
            distance = row["l2_to_retrain"]
            notes.append(f"{name}: l2_to_retrain {distance:.4f} = {distance / floor:.2f} x the noise floor")
    if "newton_source_free" in by:
        row = by["newton_source_free"]
        notes.append(f"newton_source_free vs the exact Newton update: distance {row['dist_to_exact_newton']:.4f} "
                     f"(exact step {row['exact_newton_step_norm']:.4f}; "
                     f"Hessian relative error {row['hessian_rel_error']:.3f})")
    return notes


def _label_study(rows: list[dict], counts, out: Path):
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "retrain"))
    cell = {(r["method"], r["classes"]): r for r in rows}
    table = [{"method": m, **{f"K={k}": cell[m, k]["speedup"] for k in counts}} for m in ["retrain", *methods]]
    for row in table:
        values = [row[f"K={k}"] for k in counts]
        varies = len(counts) > 2 and len(set(values)) > 1  # retrain's speedup is 1 by definition
        row["spearman(K, speedup)"] = float(spearmanr(counts, values)[0]) if varies else float("nan")
    series = {metric: {m: (list(counts), [cell[m, k][metric] for k in counts]) for m in methods}
              for metric in ("speedup", "test_acc", "forget_acc")}
    plot = curves(series, "number of classes K", out / "label_count.png", title="label-count study")
    lines = ["## Label-count study: speedup by number of classes (one class forgotten)", "",
             markdown_table(table, list(table[0])), "",
             "- Spearman correlation of speedup with K per method. Accuracies per K are in labels-K/report.md "
             "and in report.json."]
    return "\n".join(lines), str(plot)
