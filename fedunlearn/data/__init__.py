"""Data sets, forget-set selection, federated partitions and backdoor triggers."""

from fedunlearn.data.backdoor import BackdoorConfig, add_trigger, poison, triggered_test
from fedunlearn.data.datasets import DATASETS, ArrayDataset, DataBundle, DataConfig, load_dataset
from fedunlearn.data.forget import ForgetConfig, complement, select_forget
from fedunlearn.data.partition import dirichlet_partition, iid_partition, partition

__all__ = [
    "DATASETS", "ArrayDataset", "BackdoorConfig", "DataBundle", "DataConfig", "ForgetConfig",
    "add_trigger", "complement", "dirichlet_partition", "iid_partition", "load_dataset",
    "partition", "poison", "select_forget", "triggered_test",
]
