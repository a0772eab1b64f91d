"""A user's own Flower app on Flower's deployment engine: a SuperLink and three SuperNodes as
processes on 127.0.0.1, `flwr run` of an app whose ServerApp wraps FedAvg in RecordingStrategy,
one node hanging in round 2 (the round's timeout ends it without that node), then
`fedunlearn withdraw` removes a client from the finished run's model and purges its files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedunlearn import record
from fedunlearn.cli import main as cli_main
from flower_deployment import deployment, processes_with

APP = Path(__file__).parent / "flower_user_app"
# the round timeout is most of this test's time; the honest nodes answer round 2 in seconds
HANG_S, TIMEOUT_S = 900.0, 60.0


@pytest.mark.slow
def test_withdraw_a_client_from_a_deployed_flower_app(tmp_path):
    app, history = tmp_path / "app", tmp_path / "run" / "history"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "pyproject.toml").write_text((app / "pyproject.toml.in").read_text().replace("@HISTORY@", str(history)))
    (app / "pyproject.toml.in").unlink()
    overrides = f"hang-partition=2 hang-round=2 hang-seconds={HANG_S} round-timeout={TIMEOUT_S}"
    home = f"FLWR_HOME={tmp_path / 'deploy' / 'flwr-home'}"
    with deployment(tmp_path / "deploy", num_nodes=3) as (env, _, procs):
        start = time.perf_counter()
        run = subprocess.run(["flwr", "run", str(app), "test", "--stream", "--run-config", overrides], env=env,
                             capture_output=True, text=True, timeout=HANG_S - 60)
        wall = time.perf_counter() - start
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert processes_with(home), "the deployment's processes should be running inside the context"
    assert all(p.poll() is not None for p in procs)
    assert not processes_with(home), "a SuperLink, SuperNode, ServerApp or ClientApp process was left running"
    assert wall < HANG_S - 60  # the hanging node did not hold the run

    meta = json.loads((history / "store.json").read_text())
    assert sorted(meta["rounds"]["1"]["clients"]) == ["0", "1", "2"]
    assert sorted(meta["rounds"]["2"]["clients"]) == ["0", "1"] and meta["rounds"]["2"]["sent"] == 3
    assert [f["round"] for f in meta["failures"]] == [2] and "timeout" in meta["failures"][0]["cause"]

    def files_of(client: int) -> list[Path]:
        return [f for f in tmp_path.rglob("*") if f.is_file() and (f"client-{client}." in f.name
                                                                   or f"/clients/{client}/" in str(f))]

    assert files_of(0)
    assert cli_main(["withdraw", "--history", str(history), "--client", "0", "--method", "subtract"]) == 0
    assert not files_of(0) and files_of(1)
    assert record.verify(tmp_path / "run" / "deletions.jsonl")[0]
    sys.path.insert(0, str(app))
    try:
        from userapp.task import make_model, partition
    finally:
        sys.path.remove(str(app))
    model = make_model()
    model.load_state_dict(torch.load(next((tmp_path / "run").glob("model-*.pt"))))
    x, y = partition(1, 3)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.1  # a working model, not NaN or zeros
