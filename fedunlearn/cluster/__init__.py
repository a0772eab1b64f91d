"""Ray at the edge: attach or start a cluster, choose resources at run time, fan plain functions out,
submit a config as a Ray job (submit.py). Importing this package loads neither torch nor Ray."""

from fedunlearn.cluster.fanout import fan_out, task_cpu_seconds, warm_up
from fedunlearn.cluster.ray_env import (ClusterConfig, Resources, choose_resources, current_resources, ensure_ray,
                                        ray_session, tasks_that_fit, worker_device)

__all__ = ["ClusterConfig", "Resources", "choose_resources", "current_resources", "ensure_ray", "fan_out", "ray_session",
           "task_cpu_seconds", "tasks_that_fit", "warm_up", "worker_device"]
