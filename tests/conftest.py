import os

# Keep tests quiet and single-threaded per process: the CI machine has 2 cores shared by Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from pathlib import Path

import pytest


# Seconds each test file took in a full run (tests/durations.json; written by a run with
# FEDUNLEARN_TEST_DURATIONS=tests/durations.json). CI runs each file on one of two workers (pytest -n 2
# --dist loadfile), which take files in collection order: longest first, the long ones start together and
# the short ones fill in, instead of one long file running alone at the end.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_collection_modifyitems(config, items):
    """Files longest first (the order inside a file is kept). A file the record does not know yet
    is placed by its slow tests, at about a minute each."""
    import json
    from collections import Counter

    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -known.get(item.path.name, 60.0 * slow[item.path]))  # stable: files stay blocks


_seconds = {}


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    _seconds[name] = _seconds.get(name, 0.0) + report.duration


def pytest_sessionfinish(session):
    """With FEDUNLEARN_TEST_DURATIONS=path: each file's seconds (setup, call, teardown), for the order above."""
    import json

    path = os.environ.get("FEDUNLEARN_TEST_DURATIONS")
    if path and not hasattr(session.config, "workerinput") and _seconds:  # the xdist controller, or a plain run
        Path(path).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_seconds.items())}, indent=1) + "\n")


@pytest.fixture(scope="module")
def local_ray():
    """One private local Ray per test module (address="local": never a cluster left running nearby).

    Workers import test modules' task functions by name, so tests/ goes on their path.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


# --- shared data, models and tasks -----------------------------------------------------------
# One copy of each, so tests agree on what "the digits model" is. Models come from
# fedunlearn.models.fresh_model (seeded, module-level), so Ray tasks can receive the factory.


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (8x8 images, 10 classes), its fixed train / test split; loaded once."""
    from fedunlearn.data import DataConfig, load_dataset

    return load_dataset(DataConfig(name="digits"), 0)


@pytest.fixture(scope="session")
def make_digits_model():
    """make_digits_model(name="mlp", seed=0, **ModelConfig fields) -> a factory of seeded fresh models."""
    import functools

    from fedunlearn.models import ModelConfig, fresh_model

    def factory(name: str = "mlp", seed: int = 0, **fields):
        return functools.partial(fresh_model, ModelConfig(name=name, **fields), (1, 8, 8), 10, seed)

    return factory


@pytest.fixture(scope="session")
def digits_task(digits, make_digits_model):
    """An MLP trained on all of digits, and task(forget: ForgetConfig, workdir="") -> its UnlearnTask.

    Shared by the whole session: methods must not modify task.original (the contract)."""
    from fedunlearn.data import select_forget
    from fedunlearn.experiments.pipeline import make_task
    from fedunlearn.training import TrainConfig, train

    recipe = TrainConfig(epochs=15, batch_size=64, lr=0.05)
    make_model = make_digits_model("mlp", hidden=64)
    original = train(make_model(), digits.train, recipe, "cpu", seed=0, progress=False)

    def task(forget, workdir: str = ""):
        return make_task(digits.train, select_forget(digits.train.y.numpy(), forget, 0), original, train_cfg=recipe,
                         make_model=make_model, num_classes=10, device="cpu", workdir=workdir)

    return task


@pytest.fixture
def tiny_federation():
    """tiny_federation(name, methods, method_sections, **sections) -> a federated config mapping
    (3 clients on digits, 2 rounds, client 0 backdoored; see tests/tiny_federation.py)."""
    from tiny_federation import tiny_federation as mapping

    return mapping
