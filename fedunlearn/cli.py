"""`fedunlearn run | list | report`: the command line over configs in simulations/."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedunlearn import interrupt, logs, outdir
from fedunlearn.config import apply_overrides, build, load_toml
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.experiments import EXPERIMENTS

log = logging.getLogger("fedunlearn")


def load_experiment(path: str, overrides: list[str]):
    """(experiment module, validated Config) for a TOML file plus --set overrides."""
    mapping = apply_overrides(load_toml(path), overrides)
    if "kind" not in mapping:
        # An empty or partial file must not silently start a full default run.
        raise ConfigError(f"config '{path}' has no 'kind'; a minimal config is: kind = \"centralized\" "
                          f"(or one of {', '.join(EXPERIMENTS.names())}), e.g. see simulations/quickstart.toml")
    module = EXPERIMENTS.get(str(mapping["kind"]))
    return module, build(module.Config, mapping)


def cmd_run(args) -> int:
    module, cfg = load_experiment(args.config, args.set)
    out = outdir.prepare(args.out or Path("results") / cfg.experiment.name, fresh=args.fresh)
    if args.quiet:
        from fedunlearn.training import set_progress

        set_progress(False)
    start = time.perf_counter()
    report = module.run(cfg, out, progress=not args.quiet)
    from fedunlearn.metrics.report import markdown_table

    print(markdown_table(report["results"], report.get("columns")))
    print(f"\nwrote {out / 'report.json'} and {out / 'report.md'} in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_tune(args) -> int:
    import shlex

    from fedunlearn.audit.tune import require_tune, tune_methods

    require_tune()  # before any training: a missing extra is a one-line error
    methods = [name.strip() for given in args.method for name in given.split(",") if name.strip()]
    module, cfg = load_experiment(args.config, args.set)
    if getattr(module.Config, "__name__", "") != "Config" or not hasattr(cfg, "method_config"):
        raise FedUnlearnError("`fedunlearn tune` works on centralized configs")
    for name in methods:
        cfg.method_config(name)  # an unknown name fails before any training
    command = shlex.join(["fedunlearn", "tune", args.config, "--method", ",".join(methods),
                          *[a for s in args.set for a in ("--set", s)],
                          "--samples", str(args.samples), "--models", str(args.models)])
    out = args.out or Path("results") / f"tune-{'-'.join(methods) if len(methods) < 3 else 'methods'}"
    paths = tune_methods(cfg, methods, out, args.samples, args.models, command=command)
    for path in paths:
        print(path.read_text())
    print(f"wrote {', '.join(str(p) for p in paths)} and {Path(out) / 'tuned.toml'}")
    return 0


def cmd_list(args) -> int:
    from fedunlearn.data import DATASETS
    from fedunlearn.models import MODELS
    from fedunlearn.unlearn import METHODS

    print("data sets:  " + ", ".join(DATASETS.names()))
    print("models:     " + ", ".join(MODELS.names()))
    print("experiment kinds: " + ", ".join(EXPERIMENTS.names()))
    _list_methods("centralized methods", METHODS)
    if "federated" in EXPERIMENTS:
        from fedunlearn.federated.methods import FED_METHODS
        from fedunlearn.federated.queries import CLIENT_QUERIES

        _list_methods("federated methods", FED_METHODS)
        print("client queries: " + ", ".join(CLIENT_QUERIES.names()))
    if "graph" in EXPERIMENTS:
        from fedunlearn.graph import GRAPH_METHODS

        _list_methods("graph methods", GRAPH_METHODS)
    if "features_labels" in EXPERIMENTS:
        from fedunlearn.features_labels import FL_METHODS

        _list_methods("feature/label methods", FL_METHODS)
    return 0


def _list_methods(title: str, registry) -> None:
    print(f"{title}:")
    width = max(24, *map(len, registry.names()))
    for name in registry.names():
        print(f"  {name:<{width}} {registry.describe(name)}")


def cmd_report(args) -> int:
    if args.emit:  # inside a submitted job: print the files for `fedunlearn submit` to fetch (no torch needed)
        from fedunlearn.cluster.submit import emit

        print(emit(args.dir))
        return 0
    from fedunlearn.metrics.report import load_report, markdown_table

    report = load_report(args.dir)
    print(f"# {report.get('title', '')}\n")
    print(markdown_table(report["results"]))
    return 0


def cmd_submit(args) -> int:
    import os

    from fedunlearn.cluster.submit import submit

    load_experiment(args.config, args.set)  # a bad config fails here, not after the upload
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise FedUnlearnError("no cluster given: pass --address http://HEAD_IP:8265 or set RAY_ADDRESS")
    fetch_to = args.fetch_to or str(Path("results") / Path(args.config).stem)
    job, path = submit(args.config, address, args.storage, fetch_to, args.set, timeout_s=args.timeout)
    print(f"job {job} succeeded; report fetched to {path}")
    return 0


def cmd_record(args) -> int:
    from fedunlearn import record

    if not Path(args.log).is_file():  # nothing to verify is not a tampered record
        raise FedUnlearnError(f"no deletion record at '{args.log}'; a federated run writes OUT/deletions.jsonl")
    ok, message = record.verify(args.log)
    print(("OK: " if ok else "ALTERED: ") + message)
    return 0 if ok else 1


def cmd_withdraw(args) -> int:
    import json

    from fedunlearn.withdraw import withdraw

    shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else ()
    done = withdraw(args.history, args.client, args.method, args.out, args.record, args.model, shape, args.num_classes)
    print(f"client {args.client} removed with {args.method}: model {done['model']}; "
          f"{done['purge']['files_deleted']} stored files deleted; record entry {done['record']['request_id']}")
    print(json.dumps({"stats": done["stats"], "purge": done["purge"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedunlearn", description="Machine unlearning on Ray, federated and centralized.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (TOML)")
    run.add_argument("config", help="path to a TOML config, e.g. simulations/quickstart.toml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    run.add_argument("--out", help="output folder (default results/<experiment.name>)")
    run.add_argument("--fresh", action="store_true", help="empty the output folder first instead of resuming "
                     "(only a folder fedunlearn created, holding only what it wrote)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)
    tune = sub.add_parser("tune", help="search methods' settings with Ray Tune, scored against retraining")
    tune.add_argument("config")
    tune.add_argument("--method", required=True, action="append",
                      help="method to tune; repeat it or separate names by commas: every method is scored against "
                      "the same originals and retrains, trained once")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--samples", type=int, default=8, help="trials")
    tune.add_argument("--models", type=int, default=3, help="originals and retrains the trials are scored on")
    tune.add_argument("--out", default=None)
    tune.set_defaults(func=cmd_tune)
    sub.add_parser("list", help="list data sets, models and methods").set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="print the table of a finished run")
    rep.add_argument("dir")
    rep.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)  # used by submitted jobs
    rep.set_defaults(func=cmd_report)
    sub_ = sub.add_parser("submit", help="run a config as a job on a Ray cluster and fetch its report")
    sub_.add_argument("config", help="config path, relative to the working directory Ray uploads")
    sub_.add_argument("--address", default=None, help="the cluster's dashboard, e.g. http://HEAD_IP:8265 "
                      "(default: $RAY_ADDRESS)")
    sub_.add_argument("--storage", default="/tmp/fedunlearn",
                      help="folder on the cluster for reports and checkpoints (mounted on every node)")
    sub_.add_argument("--fetch-to", default=None, help="local folder for the fetched report (default results/<name>)")
    sub_.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sub_.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    sub_.set_defaults(func=cmd_submit)

    rec = sub.add_parser("record", help="the deletion record (deletions.jsonl)")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    ver = rec_sub.add_parser("verify", help="check the record's hash chain; names the first altered entry")
    ver.add_argument("log")
    ver.set_defaults(func=cmd_record)
    wd = sub.add_parser("withdraw", help="remove a client from a finished run's model using its stored history")
    wd.add_argument("--history", required=True, help="the run's history folder (store.py / RecordingStrategy)")
    wd.add_argument("--client", required=True, type=int)
    wd.add_argument("--method", default="subtract", help="a server-side method: subtract or source_free_absent")
    wd.add_argument("--out", default=None, help="where to write the unlearned model (default: beside HISTORY, model-REQUEST.pt)")
    wd.add_argument("--record", default=None, help="deletion record to append to (default: beside HISTORY)")
    wd.add_argument("--model", default=None, help="module:function building the architecture (source_free_absent)")
    wd.add_argument("--input-shape", default="", help="e.g. 1,8,8 (source_free_absent)")
    wd.add_argument("--num-classes", type=int, default=0)
    wd.set_defaults(func=cmd_withdraw)

    args = parser.parse_args(argv)
    if argv is None and args.command == "run":  # the real command line, not a test calling main() in-process
        interrupt.install()
    logs.configure()
    try:
        return args.func(args)
    except FedUnlearnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # without the handler (main() called in-process): no traceback either
        print(f"\n{interrupt.MESSAGE}", file=sys.stderr)
        return interrupt.EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
