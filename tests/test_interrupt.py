"""One SIGINT or SIGTERM ends a real `fedunlearn run` within seconds, with its Ray processes, and
the same command then resumes from the checkpoints written before the signal."""

import signal

import pytest

from cli_process import alive, interrupt_when, processes_of_session, run
from fedunlearn.interrupt import MESSAGE

CENTRALIZED = ["run", "simulations/quickstart.toml", "-q", "--set", "data.name=digits", "--set", "data.train_size=0",
               "--set", "model.name=mlp", "--set", "train.epochs=4", "--set", "train.batch_size=64",
               "--set", "experiment.methods=['retrain','finetune']"]

FEDERATED = """kind = "federated"
[experiment]
name = "interrupted"
methods = ["retrain", "continue"]
[data]
name = "digits"
train_size = 0
test_size = 0
[model]
name = "cnn"
hidden = 16
[federation]
num_clients = 3
rounds = 2
[federation.local]
epochs = 1
batch_size = 32
schedule = "constant"
[eval]
mia_max_samples = 300
"""


def _stopped_cleanly(result, within_s=30.0):
    # seconds, not the minutes a hang would take; CI runs another test file beside this one
    assert result["rc"] == 130, result["output"][-3000:]
    assert result["seconds"] < within_s, result["seconds"]
    assert MESSAGE in result["after"]
    assert "Traceback" not in result["output"] and "SIGTERM received" not in result["output"]
    assert alive(result["tree"]) == []


@pytest.mark.slow
def test_centralized_interrupt_then_resume_rebuilds_a_tampered_sidecar(tmp_path):
    out = str(tmp_path / "out")
    long_finetune = [*CENTRALIZED, "--out", out, "--set", "methods.finetune.epochs=400"]
    _stopped_cleanly(interrupt_when(long_finetune, r"retrain done"))

    ckpt = tmp_path / "out" / "checkpoints"
    side = next(ckpt.glob("original-*.json"))
    data = bytearray(side.read_bytes())
    data[len(data) // 2] = 0xFF  # one flipped byte: invalid UTF-8 as well as a checksum mismatch
    side.write_bytes(bytes(data))

    again = run(*CENTRALIZED, "--out", out, "--set", "methods.finetune.epochs=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rebuilding it" in again.stderr and "reusing checkpoint retrain-" in again.stderr
    assert "%|" not in again.stderr  # -q: no progress bar of any method
    assert (tmp_path / "out" / "confidence_finetune.png").exists()

    # A class-forget request into the same folder reuses the original (keyed on what trains it)
    # and leaves no plot of the previous run's methods beside the new report.
    other = run(*CENTRALIZED, "--out", out, "--set", "experiment.methods=['retrain']",
                "--set", "forget.kind=class", "--set", "forget.classes=[3]")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "reusing checkpoint original-" in other.stderr
    assert not (tmp_path / "out" / "confidence_finetune.png").exists()
    assert (tmp_path / "out" / "confidence_retrain.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "ctrl-c-to-the-group"])
def test_federated_interrupt_leaves_no_ray_process_and_resumes(tmp_path, sig, group):
    config = tmp_path / "fed.toml"
    config.write_text(FEDERATED)
    out = str(tmp_path / "out")
    args = ["run", str(config), "-q", "--out", out]
    result = interrupt_when([*args, "--set", "methods.continue.rounds=300"], r"continue round 1/", sig=sig, group=group)
    _stopped_cleanly(result)
    assert result["sessions"], "the run started no Ray session of its own"
    for session in result["sessions"]:
        assert processes_of_session(session) == []
    if sig != signal.SIGINT or group:
        return  # resuming does not depend on the signal: checked once (a resume is a full second run)

    again = run(*args, "--set", "methods.continue.rounds=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing checkpoint federation-" in again.stderr
    assert "reusing checkpoint method-retrain-" in again.stderr
    assert again.stderr.count("setup plugin") == 0 and "DEPRECATED FEATURE" not in again.stderr
