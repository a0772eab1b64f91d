"""SISA: shard and slice bookkeeping, keyed checkpoints, deletions, on a real local Ray (digits, MLP)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import complement
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.metrics import EvalConfig, Splits, evaluate, l2_distance
from fedunlearn.models import ModelConfig, fresh_model
from fedunlearn.training import TrainConfig
from fedunlearn.unlearn import METHODS, UnlearnTask
from fedunlearn.unlearn import sisa
from fedunlearn.unlearn.sisa_shards import (ShardEnsemble, alive_plan, fingerprints, local_slices, make_plan, makespan,
                                            prefix_keys, shard_work)

CFG = sisa.Config(shards=3, slices=3, epochs_per_slice=5)


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def make_task(data, forget_idx, workdir) -> UnlearnTask:
    n = len(data.train)
    forget_idx = np.asarray(sorted(forget_idx), dtype=np.int64)
    retain_idx = complement(n, forget_idx)
    make_model = functools.partial(fresh_model, ModelConfig(name="mlp", hidden=32), data.input_shape, 10, 0)
    return UnlearnTask(original=make_model(), retain=data.train.subset(retain_idx),
                       forget=data.train.subset(forget_idx),
                       train_cfg=TrainConfig(epochs=4, batch_size=32), make_model=make_model, num_classes=10,
                       device=torch.device("cpu"), seed=0, retain_idx=retain_idx, forget_idx=forget_idx,
                       workdir=str(workdir))


def states(model: ShardEnsemble) -> list[dict]:
    return [m.state_dict() for m in model.members]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def where(plan, position):
    """(shard, slice) holding a training position."""
    return next((s, r) for s, shard in enumerate(plan) for r, part in enumerate(shard) if position in part)


# --- bookkeeping (no Ray) -------------------------------------------------------------

def test_plan_is_a_disjoint_cover():
    plan = make_plan(100, 3, 4, seed=0)
    flat = np.concatenate([part for shard in plan for part in shard])
    assert sorted(flat.tolist()) == list(range(100))
    assert [len(shard) for shard in plan] == [4, 4, 4]
    assert all(8 <= len(part) <= 9 for shard in plan for part in shard)
    assert make_plan(100, 3, 4, seed=0)[1][2].tolist() == plan[1][2].tolist()  # seeded
    with pytest.raises(DataError, match="cannot fill"):
        make_plan(5, 3, 2, seed=0)


def test_deletion_renames_only_the_affected_prefixes(digits):
    plan = make_plan(len(digits.train), 3, 3, seed=0)
    gone = plan[1][1][0]
    after = alive_plan(plan, complement(len(digits.train), np.array([gone])))
    prints = fingerprints(digits.train)
    before_keys = [prefix_keys(prints, shard, "base", s) for s, shard in enumerate(plan)]
    after_keys = [prefix_keys(prints, shard, "base", s) for s, shard in enumerate(after)]
    assert before_keys[0] == after_keys[0] and before_keys[2] == after_keys[2]
    assert before_keys[1][0] == after_keys[1][0]
    assert before_keys[1][1] != after_keys[1][1] and before_keys[1][2] != after_keys[1][2]
    assert gone not in after[1][1] and len(after[1][1]) == len(plan[1][1]) - 1


def test_local_slices_index_the_shard_in_slice_order():
    shard = [np.array([7, 2]), np.array([9]), np.array([4, 1, 3])]
    positions, local = local_slices(shard)
    assert positions.tolist() == [7, 2, 9, 4, 1, 3]
    assert [positions[part].tolist() for part in local] == [p.tolist() for p in shard]


def test_other_data_gets_other_names(digits):
    plan = make_plan(len(digits.train), 3, 3, seed=0)
    shifted = digits.train.subset(np.arange(len(digits.train)))
    shifted.x = shifted.x.clone()
    shifted.x[plan[0][0][0]] += 0.5
    before, after = fingerprints(digits.train), fingerprints(shifted)
    assert prefix_keys(before, plan[0], "b", 0)[0] != prefix_keys(after, plan[0], "b", 0)[0]


def test_cost_model():
    shard = [np.arange(10), np.arange(10, 20), np.arange(20, 30)]
    assert shard_work(shard, 0, epochs=2) == 2 * (10 + 20 + 30)
    assert shard_work(shard, 2, epochs=2) == 60
    assert makespan([4, 4, 4, 4], 2) == 8 and makespan([4, 4, 4, 4], 1) == 16 and makespan([5, 1, 1], 2) == 5


def test_ensemble_outputs_are_log_probabilities():
    members = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(5, 4)
    for aggregate in ("mean", "vote"):
        out = ShardEnsemble(members, aggregate)(x)
        assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-3)
    votes = torch.stack([m(x).argmax(1) for m in members])
    majority = ShardEnsemble(members, "vote")(x).argmax(1)
    assert all((votes[:, i] == majority[i]).sum() >= 1 for i in range(5))


def test_bad_input_is_reported(digits, tmp_path):
    with pytest.raises(ConfigError, match="shards"):
        build(sisa.Config, {"shards": 0})
    with pytest.raises(ConfigError, match="aggregate"):
        build(sisa.Config, {"aggregate": "median"})
    task = make_task(digits, [0], tmp_path)
    task.retain_idx = None
    with pytest.raises(ConfigError, match="retain_idx"):
        sisa.unlearn(task, CFG)


# --- training, deletion and checkpoints on Ray ----------------------------------------

def test_single_deletion_retrains_one_shard_and_repeats_for_free(digits, tmp_path):
    assert "sisa" in METHODS.names()
    prep = sisa.prepare(make_task(digits, [], tmp_path), CFG)
    assert prep["prepare_slices"] == 9
    plan = make_plan(len(digits.train), 3, 3, seed=0)
    position = int(plan[2][1][3])
    model, stats = sisa.unlearn(make_task(digits, [position], tmp_path), CFG)
    assert where(plan, position) == (2, 1)
    assert (stats["shards_retrained"], stats["slices_retrained"], stats["retrained"]) == (1, 2, "s2:r1-2")
    assert stats["predicted_speedup_vs_full_sisa"] > 1 and stats["predicted_speedup"] > 1
    _, again = sisa.unlearn(make_task(digits, [position], tmp_path), CFG)
    assert (again["shards_retrained"], again["slices_retrained"]) == (0, 0)

    # SISA is exact: the result equals SISA trained from scratch without the sample.
    scratch = make_task(digits, [position], tmp_path / "scratch")
    fresh, fresh_stats = sisa.unlearn(scratch, CFG)
    assert fresh_stats["slices_retrained"] == 9
    assert same(states(model), states(fresh))

    splits = Splits(retain=digits.train.subset(np.arange(300)), forget=digits.train.subset([position]),
                    test=digits.test)
    row, _ = evaluate(model, splits, torch.device("cpu"), EvalConfig(mia_max_samples=100))
    assert row["test_acc"] > 0.5
    assert math.isnan(l2_distance(model, model.members[0]))  # an ensemble has no parameter distance to one model


def test_deletion_touching_several_shards_and_batched_requests(digits, tmp_path):
    sisa.prepare(make_task(digits, [], tmp_path), CFG)
    plan = make_plan(len(digits.train), 3, 3, seed=0)
    first = [int(plan[0][2][0]), int(plan[1][0][5])]   # shard 0 at slice 2, shard 1 at slice 0
    second = [int(plan[0][1][1])]                       # shard 0 again, now at slice 1
    # Two requests batched into one call: each affected shard retrains once, from its earliest slice.
    _, stats = sisa.unlearn(make_task(digits, first + second, tmp_path), CFG)
    assert stats["retrained"] == "s0:r1-2 s1:r0-2"
    assert stats["slices_retrained"] == 2 + 3
    assert stats["critical_path_samples"] <= stats["work_samples"]


def test_corrupted_checkpoint_is_rebuilt_never_used(digits, tmp_path):
    task = make_task(digits, [], tmp_path)
    sisa.prepare(task, CFG)
    model, _ = sisa.unlearn(make_task(digits, [], tmp_path), CFG)  # nothing deleted: all cached
    last = sorted((tmp_path / "sisa").glob("shard001-slice002-*.pt"))
    assert len(last) == 1
    last[0].write_bytes(last[0].read_bytes()[:-100] + b"x" * 100)   # same size, different bytes
    middle = sorted((tmp_path / "sisa").glob("shard000-slice001-*.pt"))[0]
    middle.write_bytes(b"garbage")  # not needed while the later prefix of shard 0 is valid
    rebuilt, stats = sisa.unlearn(make_task(digits, [], tmp_path), CFG)
    assert (stats["retrained"], stats["slices_retrained"]) == ("s1:r2-2", 1)
    assert same(states(rebuilt), states(model))  # rebuilt from slice 1's checkpoint: identical


def test_missing_checkpoint_folder_means_full_training(digits, tmp_path):
    _, stats = sisa.unlearn(make_task(digits, [3], Path(tmp_path) / "new"), CFG)
    assert stats["shards_retrained"] == 3 and stats["slices_retrained"] == 9
