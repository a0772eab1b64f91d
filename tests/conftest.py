import os

# Keep tests quiet and single-threaded per process: the CI machine has 2 cores shared by Ray workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from pathlib import Path

import pytest


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
