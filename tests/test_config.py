from dataclasses import dataclass
from pathlib import Path

import pytest

from fedunlearn.cli import load_experiment, main
from fedunlearn.config import apply_overrides, build, parse_override
from fedunlearn.errors import ConfigError
from fedunlearn.training import TrainConfig


@dataclass(frozen=True)
class Inner:
    epochs: int = 1
    lr: float = 0.1


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = Inner()
    tags: tuple[str, ...] = ()


def test_build_nested_and_coerces_int_to_float():
    cfg = build(Outer, {"inner": {"lr": 1, "epochs": 3}, "tags": ["a", "b"]})
    assert cfg.inner == Inner(epochs=3, lr=1.0) and cfg.tags == ("a", "b")


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match=r"inner\.epoch'.*valid keys.*epochs, lr"):
        build(Outer, {"inner": {"epoch": 3}})


@pytest.mark.parametrize("mapping, fragment", [
    ({"inner": {"epochs": "three"}}, "inner.epochs' must be an integer"),
    ({"inner": {"epochs": True}}, "inner.epochs' must be an integer"),
    ({"inner": 3}, "'inner' must be a section"),
    ({"tags": "a"}, "'tags' must be a list"),
])
def test_bad_types_are_named(mapping, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build(Outer, mapping)


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match="'epochs' must be in"):
        build(TrainConfig, {"epochs": -1})


def test_overrides_parse_toml_literals():
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("forget.classes=[1, 2]") == (["forget", "classes"], [1, 2])
    assert parse_override("data.name=digits") == (["data", "name"], "digits")
    mapping = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=4", "eval.mia_feature=entropy"])
    assert mapping == {"train": {"epochs": 4}, "eval": {"mia_feature": "entropy"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("novalue")


@pytest.mark.parametrize("override, fragment", [
    ("data.name=imagenet", "unknown data set 'imagenet'; valid choices: cifar10, digits, fashion-mnist"),
    ("model.name=vit", "unknown model 'vit'"),
    ("experiment.methods=['retrain', 'magic']", "unknown method 'magic'; valid choices:"),
    ("train.epocs=3", "unknown config key 'train.epocs'"),
    ("methods.finetune.epoch=3", "unknown config key 'methods.finetune.epoch'"),
    ("forget.kind=some", "'forget.kind' must be one of"),
    ("forget.fraction=1.5", "forget.fraction"),
    ("kind=nonsense", "unknown experiment kind 'nonsense'"),
])
def test_cli_rejects_bad_input_with_clear_message(override, fragment, capsys, tmp_path):
    code = main(["run", "simulations/quickstart.toml", "--set", override, "--out", str(tmp_path)])
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_quickstart_config_is_valid():
    _, cfg = load_experiment("simulations/quickstart.toml", [])
    assert cfg.data.name == "fashion-mnist" and cfg.forget.fraction == 0.1
    assert cfg.method_names()[0] == "retrain"


def test_missing_config_file(capsys):
    assert main(["run", "no/such.toml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "digits", "cnn", "resnet18", "retrain", "neggrad_plus", "random_label"):
        assert name in out


@pytest.mark.parametrize("override, message", [("model.name=vit", "unknown model 'vit'"),
                                               ("data.name=imagenet", "unknown data set 'imagenet'")])
@pytest.mark.parametrize("config", ["simulations/quickstart.toml", "simulations/sisa.toml",
                                    "simulations/withdrawal.toml", "simulations/survey.toml"])
def test_unknown_model_or_data_set_fails_when_the_config_is_built(config, override, message, capsys):
    """Checked by the registries while the config is built (load_experiment), before any data loads."""
    with pytest.raises(ConfigError, match=message):
        load_experiment(config, [override])
    assert main(["run", config, "--set", override, "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_client_queries_registry_names_unknown_queries():
    from fedunlearn.federated.queries import CLIENT_QUERIES, get_query

    assert callable(get_query("pga_ascent"))
    with pytest.raises(ConfigError, match="unknown client query 'nope'.*pga_ascent"):
        get_query("nope")
    assert "pga_ascent" in CLIENT_QUERIES.names()


@pytest.mark.parametrize("config", sorted(str(p.relative_to(Path(__file__).parents[1]))
                                          for p in (Path(__file__).parents[1] / "simulations").glob("*.toml")))
def test_every_shipped_config_builds(config):
    """A key renamed in code and not in a shipped config is a ConfigError at build time; this
    catches it here rather than in a user's run (building loads no data)."""
    module, cfg = load_experiment(str(Path(__file__).parents[1] / config), [])
    assert module is not None and cfg is not None
