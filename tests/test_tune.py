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
from fedunlearn.unlearn import finetune, l1_sparse, scrub, unrolling_sgd


def test_search_space_from_config_defaults():
    space = search_space(scrub.Config)
    assert space["lr"] == ("loguniform", pytest.approx(2e-4), pytest.approx(2e-2))
    assert space["epochs"] == ("randint", 1, 7) and space["alpha"][0] == "uniform"
    assert "temperature" not in space


def test_search_space_follows_a_fields_own_range():
    """A field's metadata overrides the heuristics: l1's alpha is a penalty weight, not a share; unrolling's scale has no
    default-derived range at all."""
    assert search_space(l1_sparse.Config)["alpha"] == ("loguniform", 1e-4, 1e-1)
    assert search_space(unrolling_sgd.Config) == {"scale": ("loguniform", 1e-3, 1.0)}


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
    assert some["score"] < none["score"]  # fine-tuning on retain moves toward retraining; a no-op does not
    assert some["score"] == pytest.approx(some["klom_forget"] + some["klom_val"]) and 0.5 < some["val_acc"] <= 1
    broken = trial({"scale": 1e6}, "unrolling_sgd", unrolling_sgd.Config(), shared, originals, retrains, labels)
    assert broken["score"] > some["score"]  # a step that wrecks the model scores far from retraining (or inf)
    assert score(retrains, retrains, labels) == pytest.approx(0.0, abs=1e-9)


def test_write_section_is_valid_toml(tmp_path):
    import tomllib

    path = write_section(tmp_path, "finetune", {"lr": 0.0123456789, "epochs": 3}, 1.5, 8, 3)
    parsed = tomllib.loads(path.read_text())
    assert parsed["methods"]["finetune"] == {"lr": pytest.approx(0.0123457), "epochs": 3}
    best = {"score": 1.5, "klom_forget": 1.0, "klom_val": 0.5, "val_acc": 0.9}
    path = write_section(tmp_path, "finetune", {"lr": 0.01}, best, 8, 3, command="fedunlearn tune x.toml --method finetune",
                         where="class forget set", start={"score": 2.0, "val_acc": 0.8})
    text = path.read_text()
    assert "fedunlearn tune x.toml --method finetune" in text and "started from scored 2.0000" in text
    assert tomllib.loads(text)["methods"]["finetune"] == {"lr": pytest.approx(0.01)}


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
    """The whole `fedunlearn tune` path on Ray Tune: two methods searched against one set of originals and
    retrains, each best setting written as TOML, and all of them in tuned.toml."""
    import tomllib

    pytest.importorskip("ray.tune")
    overrides = ["data.name=digits", "data.train_size=0", "data.val_size=200", "model.name=mlp", "train.epochs=5",
                 "experiment.seed=7"]
    args = ["tune", "simulations/quickstart.toml", "--method", "finetune", "--method", "random_label,l1_sparse",
            "--samples", "2", "--models", "2", "--out", str(tmp_path)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    section = tomllib.loads((tmp_path / "tuned_finetune.toml").read_text())["methods"]["finetune"]
    assert set(section) <= {"epochs", "lr", "batch_size"} and section
    both = tomllib.loads((tmp_path / "tuned.toml").read_text())["methods"]
    assert set(both) == {"finetune", "random_label", "l1_sparse"} and "alpha" in both["l1_sparse"]
    text = (tmp_path / "tuned_random_label.toml").read_text()
    assert "--method finetune,random_label,l1_sparse" in text and "started from scored" in text


def test_tune_refuses_an_unknown_method_before_training(capsys):
    pytest.importorskip("ray.tune")
    assert main(["tune", "simulations/quickstart.toml", "--method", "finetune,no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err


def test_tune_refuses_a_method_named_twice_and_too_few_models(capsys):
    pytest.importorskip("ray.tune")
    assert main(["tune", "simulations/audit.toml", "--method", "finetune,finetune"]) == 2
    assert "once" in capsys.readouterr().err
    assert main(["tune", "simulations/audit.toml", "--method", "finetune", "--models", "1"]) == 2
    assert "--models >= 2" in capsys.readouterr().err
