"""The federated pieces without Flower: FedAvg arithmetic, stored history, the withdrawal
protocol, each method's math, and a method run over the in-process transport on `digits`."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.config import build
from fedunlearn.errors import ConfigError, WithdrawalError
from fedunlearn.federated import fedavg
from fedunlearn.federated.client import local_data
from fedunlearn.federated.config import Config
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.fedavg import aggregate_replies
from fedunlearn.federated.history import History, StoredRound
from fedunlearn.federated.transport import LocalTransport
from fedunlearn.federated.methods import FED_METHODS, federaser, load_method, subtract
from fedunlearn.federated.rounds import run_fedavg, stored_rounds
from fedunlearn.federated.withdrawal import Membership
from fedunlearn.models import build_model


def vec(*values) -> dict:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_fedavg_weights_by_samples():
    agg = fedavg.apply_updates(vec(0.0, 0.0), [(vec(1.0, 0.0), 1), (vec(0.0, 3.0), 3)])
    assert torch.allclose(agg["w"], torch.tensor([0.25, 2.25]))


def test_integer_buffers_are_not_averaged():
    sent = {"w": torch.zeros(2), "n": torch.tensor(5)}
    result = aggregate_replies(sent, {0: ({"w": torch.ones(2), "n": torch.tensor(9)}, 2, {}),
                                      1: RuntimeError("client 1 crashed")})
    assert result.failed == [1] and int(result.state["n"]) == 5 and torch.allclose(result.state["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="every client failed"):
        aggregate_replies(sent, {0: RuntimeError("down")})


def test_l2_projection_stays_in_the_ball():
    center = vec(0.0, 0.0)
    assert fedavg.norm(fedavg.delta(fedavg.l2_project(vec(3.0, 4.0), center, 1.0), center)) == pytest.approx(1.0)
    assert torch.equal(fedavg.l2_project(vec(0.3, 0.4), center, 1.0)["w"], vec(0.3, 0.4)["w"])


def test_stored_rounds_cover_training():
    assert stored_rounds(6, 1) == [1, 2, 3, 4, 5, 6]
    assert stored_rounds(6, 4) == [1, 5, 6]  # the last round is always kept (PGA needs it)
    assert stored_rounds(6, 0) == []


def linear_history() -> tuple[FedContext, dict]:
    """Two rounds, three clients whose updates simply add up (a model linear in its updates)."""
    w0 = vec(0.0, 0.0)
    ups = {0: (vec(1.0, 0.0), 2), 1: (vec(0.0, 1.0), 1), 2: (vec(0.0, 1.0), 1)}
    history, state = History(store_every=1), w0
    for rnd in (1, 2):
        history.rounds.append(StoredRound(rnd, state, dict(ups)))
        state = fedavg.apply_updates(state, list(ups.values()))
    ctx = FedContext(global_state=state, initial_state=w0, history=history, departing=0, remaining=[1, 2],
                     num_clients=3, num_classes=2, input_shape=(2,), make_model=None, fed_cfg=None,
                     device=torch.device("cpu"), transport=None, train_rounds=2)
    retrained = fedavg.add(w0, fedavg.weighted_sum([ups[1], ups[2]]), 2.0)
    return ctx, retrained


def test_subtract_is_exact_for_a_linear_model():
    ctx, retrained = linear_history()
    result = subtract.unlearn(ctx, subtract.Config(rescale=True))
    assert torch.allclose(result.state["w"], retrained["w"]) and result.rounds == 0
    assert ctx.traffic.messages_to_remaining == 0
    plain = subtract.unlearn(ctx, subtract.Config(rescale=False))
    assert torch.allclose(plain.state["w"], torch.tensor([0.0, 1.0]))


def test_subtract_keeps_valid_batchnorm_statistics():
    """Label skew: the departing client raised a running variance that the others lowered, so
    subtracting and rescaling its share drives the variance negative; the layer must then keep
    the global model's statistics, or every output is NaN."""
    w0 = {"w": torch.zeros(2), "bn.running_mean": torch.zeros(2), "bn.running_var": torch.ones(2)}
    ups = {0: ({"w": torch.ones(2), "bn.running_mean": torch.ones(2), "bn.running_var": torch.full((2,), 3.0)}, 2),
           1: ({"w": torch.ones(2), "bn.running_mean": torch.zeros(2), "bn.running_var": torch.full((2,), -1.5)}, 1),
           2: ({"w": torch.ones(2), "bn.running_mean": torch.zeros(2), "bn.running_var": torch.full((2,), -1.5)}, 1)}
    history = History(store_every=1)
    history.rounds.append(StoredRound(1, w0, dict(ups)))
    state = fedavg.apply_updates(w0, list(ups.values()))
    ctx = FedContext(global_state=state, initial_state=w0, history=history, departing=0, remaining=[1, 2],
                     num_clients=3, num_classes=2, input_shape=(2,), make_model=None, fed_cfg=None,
                     device=torch.device("cpu"), transport=None, train_rounds=1)
    result = subtract.unlearn(ctx, subtract.Config(rescale=True))
    assert result.stats["batchnorm_layers_kept"] == 1
    assert torch.equal(result.state["bn.running_var"], state["bn.running_var"])
    assert torch.allclose(result.state["w"], torch.ones(2))  # the weights are still subtracted


def test_federaser_keeps_the_stored_direction_and_the_calibrated_size():
    stored = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0, 0.0])}
    calib = {"a": torch.tensor([0.0, 10.0]), "b": torch.tensor([0.0, 0.5])}
    out = federaser.calibrate(stored, calib)
    assert torch.allclose(out["a"], torch.tensor([6.0, 8.0])) and torch.allclose(out["b"], torch.tensor([0.5, 0.0]))


def test_withdrawal_protocol():
    members = Membership(3)
    assert members.withdraw(1) == [0, 2]
    with pytest.raises(WithdrawalError, match="already withdrawn"):
        members.withdraw(1)
    with pytest.raises(WithdrawalError, match="cannot withdraw client 5"):
        members.withdraw(5)
    members.withdraw(0)
    with pytest.raises(WithdrawalError, match="last one"):
        members.withdraw(2)


def test_config_errors_name_the_key():
    base = {"kind": "federated", "data": {"name": "digits"}, "federation": {"num_clients": 3}}
    with pytest.raises(ConfigError, match="federation.clients"):
        build(Config, {**base, "federation": {"clients": 3}})
    with pytest.raises(ConfigError, match="unknown federated method 'fedraser'"):
        build(Config, {**base, "experiment": {"methods": ["fedraser"]}})
    with pytest.raises(ConfigError, match="methods.pga.radius"):
        build(Config, {**base, "methods": {"pga": {"radius": 1.0}}})
    with pytest.raises(ConfigError, match="after the last round"):
        build(Config, {**base, "withdrawal": {"after_round": 9}})


def test_every_baseline_is_registered_and_documented():
    for name in ("retrain", "continue", "federaser", "pga", "subtract"):
        module = load_method(name)
        assert module.__doc__ and hasattr(module, "Config") and hasattr(module, "unlearn")
    assert {"source_free_absent", "source_free_cooperative"} <= set(FED_METHODS.names())


def test_methods_over_the_in_process_transport():
    """pga asks the departing client once; offline, the context refuses before sending anything."""
    cfg = build(Config, {"kind": "federated", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": 32},
                         "federation": {"num_clients": 3, "rounds": 1}, "backdoor": {"fraction": 0.2}})
    transport = LocalTransport(cfg)
    local = local_data(cfg, 0)
    assert len(local.poisoned_idx) == round(0.2 * len(local.train)) and len(local_data(cfg, 1).poisoned_idx) == 0
    make = lambda: build_model(cfg.model, local.input_shape, local.num_classes)  # noqa: E731
    init = make().state_dict()
    fit = lambda ids, s, c: aggregate_replies(s, transport.train(ids, s, {**c, "phase": "train"}))  # noqa: E731
    state, history, curve, _ = run_fedavg(fit, [0, 1, 2], init, 1, store_every=1)

    def context(online: bool) -> FedContext:
        trained = {"global_state": state, "initial_state": init, "history": history}
        return FedContext.create(cfg, transport, trained, make, departing_online=online)

    ctx = context(True)
    result = load_method("pga").unlearn(ctx, load_method("pga").Config(post_rounds=1))
    assert ctx.traffic.messages_to_departing == 1 and ctx.traffic.messages_to_remaining == 2
    assert result.rounds == 2 and len(result.curve) == 2
    with pytest.raises(WithdrawalError, match="offline"):
        load_method("pga").unlearn(context(False), load_method("pga").Config())


def test_flowers_ray_is_private_unless_ray_address_names_a_cluster(monkeypatch):
    """Left to Ray's default (no address), `ray.init` joins the cluster `ray start` last recorded on
    the machine (checked by hand: it connected to a `ray start --head` started beside it); the
    simulation's Ray is a private local one unless RAY_ADDRESS names a cluster."""
    from fedunlearn.experiments.federated import ray_init_args

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_args() == {"include_dashboard": False, "address": "local"}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_init_args()["address"] == "10.0.0.5:6379"


def test_both_source_free_modes_share_one_repair():
    """source_free_cooperative starts with source_free_absent's repair: with one `reuse` dict per
    withdrawal it is done once, the second mode reports the seconds it took, and the result is
    the one it computes alone; other repair settings are not reused."""
    from fedunlearn.experiments.federated_matrix import InlineServer
    from fedunlearn.federated.driver import timed_method

    cfg_mapping = {"kind": "federated", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": 32},
                   "federation": {"num_clients": 3, "rounds": 2}, "backdoor": {"fraction": 0.3}}
    cfg = build(Config, cfg_mapping)
    transport = LocalTransport(cfg)
    local = local_data(cfg, 0)
    make = lambda: build_model(cfg.model, local.input_shape, local.num_classes)  # noqa: E731
    init = make().state_dict()
    fit = lambda ids, s, c: aggregate_replies(s, transport.train(ids, s, {**c, "phase": "train"}))  # noqa: E731
    state, history, _, _ = run_fedavg(fit, [0, 1, 2], init, 2, store_every=1)
    trained = {"global_state": state, "initial_state": init, "history": history}
    absent, coop = load_method("source_free_absent"), load_method("source_free_cooperative")
    small = {"generator": {"steps": 5}, "consolidate": {"steps": 5}, "skip_agreement": 2.0}
    absent_cfg, coop_cfg = build(absent.Config, small), build(coop.Config, {**small, "refine_steps": 5})

    def run(method, method_cfg, reuse):
        ctx = FedContext.create(cfg, transport, trained, make, server=InlineServer(), reuse=reuse)
        return method.unlearn(ctx, method_cfg)

    reuse = {}
    first, shared = run(absent, absent_cfg, reuse), run(coop, coop_cfg, reuse)
    alone = run(coop, coop_cfg, None)
    assert "reused_s" not in first.stats and "reused_s" not in alone.stats
    assert shared.stats["reused_s"] > 0 and len(reuse) == 1
    assert all(torch.equal(shared.state[k], alone.state[k]) for k in alone.state)
    other = run(coop, build(coop.Config, {**small, "refine_steps": 5, "consolidate": {"steps": 6}}), reuse)
    assert "reused_s" not in other.stats and len(reuse) == 2

    # timed repeats (a method under experiment.repeat_below_s) do the work again: three runs, three repairs
    class CountingServer(InlineServer):
        tasks = 0

        def run(self, fn, *args, **kwargs):
            self.tasks += 1
            return super().run(fn, *args, **kwargs)

    server, timed_cfg = CountingServer(), build(Config, {**cfg_mapping, "experiment": {"repeat_below_s": 1e9}})
    row = timed_method(timed_cfg, absent, absent_cfg, "source_free_absent", transport, trained, make, server,
                       reuse={})["row"]
    assert row["wall_repeats"] == 3 and server.tasks == 3

    # a single timed run (no repeats) that takes the repair from the withdrawal's dict counts it in its wall time
    once_cfg = build(Config, {**cfg_mapping, "experiment": {"repeat_below_s": 0.0}})
    row = timed_method(once_cfg, coop, coop_cfg, "source_free_cooperative", transport, trained, make, InlineServer(),
                       reuse=reuse)["row"]
    assert row["wall_repeats"] == 1 and row["wall_s"] >= row["reused_s"] > 0
