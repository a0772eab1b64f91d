"""`fedunlearn tune`: the search space, and trials scored against retraining on the validation split."""

import pytest
import torch

from fedunlearn.audit.ensemble import ORIGINAL, RETRAIN_A, Job, Shared, member
from fedunlearn.audit.tune import score, search_space, trial, write_section
from fedunlearn.cli import main
from fedunlearn.data import DataConfig, complement, load_dataset
from fedunlearn.metrics import EvalConfig, Splits
from fedunlearn.models import ModelConfig
from fedunlearn.training import TrainConfig
from fedunlearn.unlearn import finetune, scrub


def test_search_space_from_config_defaults():
    space = search_space(scrub.Config)
    assert space["lr"] == ("loguniform", pytest.approx(2e-4), pytest.approx(2e-2))
    assert space["epochs"] == ("randint", 1, 7) and space["alpha"][0] == "uniform"
    assert "temperature" not in space


def test_trial_scores_closer_to_retraining_lower():
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(name="digits", val_size=150), 0)
    forget_idx = torch.nonzero(data.train.y == 3).flatten().numpy()
    retain_idx = complement(len(data.train), forget_idx)
    retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
    shared = Shared(ModelConfig(name="mlp", hidden=32), data.input_shape, 10, TrainConfig(epochs=10, batch_size=64),
                    EvalConfig(mia_max_samples=100), data.train, retain, forget, Splits(retain, forget, data.val), data.val,
                    retain_idx, forget_idx)
    originals = [member(Job(ORIGINAL, i, i, evaluate=False), shared).state for i in range(3)]
    retrains = [member(Job(RETRAIN_A, i, 3 + i), shared).logits for i in range(3)]
    labels = {"forget": forget.y, "val": data.val.y}
    none = trial({"epochs": 1, "lr": 1e-6}, "finetune", finetune.Config(), shared, originals, retrains, labels)
    some = trial({"epochs": 4, "lr": 0.05}, "finetune", finetune.Config(), shared, originals, retrains, labels)
    assert some < none  # fine-tuning on retain moves toward retraining; a no-op does not
    assert score(retrains, retrains, labels) == pytest.approx(0.0, abs=1e-9)


def test_write_section_is_valid_toml(tmp_path):
    import tomllib

    path = write_section(tmp_path, "finetune", {"lr": 0.0123456789, "epochs": 3}, 1.5, 8, 3)
    parsed = tomllib.loads(path.read_text())
    assert parsed["methods"]["finetune"] == {"lr": pytest.approx(0.0123457), "epochs": 3}


def test_tune_without_ray_tune_extras_is_a_one_line_error(capsys):
    try:
        import ray.tune  # noqa: F401
        pytest.skip("ray[tune] is installed here")
    except ImportError:
        pass
    assert main(["tune", "simulations/quickstart.toml", "--method", "finetune"]) == 2
    assert "ray[tune]" in capsys.readouterr().err


@pytest.mark.slow
def test_tune_command_writes_the_best_section(tmp_path, capsys):
    """The whole `fedunlearn tune` path on Ray Tune: trials run, the best setting is written as TOML."""
    import tomllib

    pytest.importorskip("ray.tune")
    overrides = ["data.name=digits", "data.train_size=0", "data.val_size=200", "model.name=mlp", "train.epochs=5"]
    args = ["tune", "simulations/quickstart.toml", "--method", "finetune", "--samples", "2", "--models", "2",
            "--out", str(tmp_path)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    section = tomllib.loads((tmp_path / "tuned_finetune.toml").read_text())["methods"]["finetune"]
    assert set(section) <= {"epochs", "lr", "batch_size"} and section
