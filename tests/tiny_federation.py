"""The tiny federation the federated tests share: 3 clients on digits, 2 rounds, a backdoored client 0."""


def tiny_federation(name: str, methods: list[str], method_sections: dict, **sections) -> dict:
    """A federated config mapping; `sections` are merged into (not replacing) the defaults."""
    mapping = {
        "kind": "federated",
        "experiment": {"name": name, "methods": methods},
        "data": {"name": "digits", "train_size": 0, "test_size": 0},
        "model": {"name": "cnn", "hidden": 32},
        "federation": {"num_clients": 3, "rounds": 2, "local": {"epochs": 2, "batch_size": 32, "lr": 0.05,
                                                                "schedule": "constant"}},
        "withdrawal": {"client": 0},
        "backdoor": {"fraction": 0.2, "target": 0, "size": 2},
        "eval": {"mia_max_samples": 300},
        "methods": method_sections,
    }
    for section, values in sections.items():
        mapping[section] = {**mapping.get(section, {}), **values}
    return mapping


def digits_mlp():
    """An MLP of hidden width 16 for digits, as a `fedunlearn withdraw --model` factory."""
    from fedunlearn.models import ModelConfig, build_model

    return build_model(ModelConfig(name="mlp", hidden=16), (1, 8, 8), 10)
