"""Methods that replay stored rounds read a disk store's updates one at a time: the same model
as from the in-memory history, with the stored updates' memory at about one update, not a round."""

from __future__ import annotations

import tracemalloc

import pytest
import torch

from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.history import History
from fedunlearn.federated.methods import fedrecovery, pga, replay
from fedunlearn.federated.store import DiskHistory

CLIENTS, SIZE = 8, 250_000  # one update is 1 MB of float32


def stores(tmp_path):
    gen = torch.Generator().manual_seed(0)
    initial = {"w": torch.zeros(SIZE), "b": torch.zeros(5)}
    disk, memory = DiskHistory(tmp_path / "h", 1), History(1)
    disk.set_model("initial", initial)
    updates = {c: ({"w": torch.randn(SIZE, generator=gen), "b": torch.randn(5, generator=gen)}, 10 + c)
               for c in range(CLIENTS)}
    for h in (disk, memory):
        h.record(1, initial, updates, 1)
    final = fedavg.apply_updates(initial, list(updates.values()))
    return initial, final, disk, memory


def context(history, initial, final) -> FedContext:
    return FedContext(global_state=final, initial_state=initial, history=history, departing=0,
                      remaining=list(range(1, CLIENTS)), num_clients=CLIENTS, num_classes=2, input_shape=(1,),
                      make_model=None, fed_cfg=None, device=torch.device("cpu"), transport=None, train_rounds=1)


@pytest.mark.parametrize("method", ["replay", "pga_reference", "fedrecovery_residuals"])
def test_stored_rounds_stream_from_disk(tmp_path, method):
    initial, final, disk, memory = stores(tmp_path)
    run = {"replay": lambda ctx: replay.unlearn(ctx, replay.Config(keep_curve=False)).state,
           "pga_reference": pga.reference_model,
           "fedrecovery_residuals": fedrecovery.residuals}[method]
    expected = run(context(memory, initial, final))
    one = traced_peak(lambda: disk.rounds[0].updates[1])
    peak = traced_peak(lambda: run(context(disk, initial, final)))
    got = run(context(disk, initial, final))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # holding the round's 7 other updates together would add 6 updates to the cost of reading one; a
    # method may hold its running sum, a global model and the update before the one it reads
    assert peak < one + 3 * SIZE * 4, f"peak {peak / 1e6:.1f} MB, reading one update {one / 1e6:.1f} MB"


def traced_peak(fn) -> int:
    """Peak of Python-traced memory during fn(): numpy buffers (each update read from disk, its
    checksum's read blocks) are traced, torch's own allocations are not."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_federaser_from_disk_matches_memory(tmp_path):
    """FedEraser's calibrated replay over the in-process transport: a disk store gives the model
    the in-memory history gives."""
    from fedunlearn.config import build
    from fedunlearn.federated.config import Config
    from fedunlearn.federated.driver import train_federation
    from fedunlearn.federated.methods import federaser
    from fedunlearn.federated.transport import LocalTransport
    from fedunlearn.models import build_model
    from fedunlearn.training import seed_everything
    from tiny_federation import tiny_federation

    models = {}
    for history in ("memory", "disk"):
        cfg = build(Config, tiny_federation("stream", ["federaser"], {}, model={"name": "mlp", "hidden": 16},
                                            federation={"history": history, "local": {"epochs": 1}}))

        def make_model():
            seed_everything(0)
            return build_model(cfg.model, (1, 8, 8), 10)

        transport = LocalTransport(cfg)
        trained = train_federation(cfg, transport, make_model, tmp_path / history)
        ctx = FedContext.create(cfg, transport, trained, make_model)
        models[history] = federaser.unlearn(ctx, federaser.Config()).state
    assert all(torch.equal(models["disk"][k], models["memory"][k]) for k in models["memory"])
