"""Realistic federations without Flower: triggers, partial participation, the departing client
by rule, a stronger attacker, and the server-only baselines on a tiny digits federation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import BackdoorConfig, add_trigger, poison
from fedunlearn.errors import ConfigError
from fedunlearn.federated import fedavg
from fedunlearn.federated.client import (departing_client, durable_mask, federation_data, local_data, local_train,
                                        round_seed)
from fedunlearn.federated.config import Config
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.durable import allowed_coordinates, project
from fedunlearn.federated.fedavg import aggregate_replies
from fedunlearn.federated.transport import LocalTransport
from fedunlearn.federated.methods import load_method
from fedunlearn.federated.rounds import run_fedavg, sample_clients
from fedunlearn.federated.withdrawal import pick_client
from fedunlearn.models import build_model
from fedunlearn.training import get_device


def tiny(**sections) -> Config:
    mapping = {"kind": "federated", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": 32},
               "federation": {"num_clients": 5, "rounds": 4, "clients_per_round": 2},
               "backdoor": {"fraction": 0.3}}
    for key, values in sections.items():
        mapping[key] = {**mapping.get(key, {}), **values}
    return build(Config, mapping)


@pytest.mark.parametrize("position", ["bottom-right", "bottom-left", "top-right", "top-left", "centre"])
def test_patch_triggers_sit_where_asked(position):
    x = torch.zeros(2, 1, 8, 8)
    out = add_trigger(x, BackdoorConfig(size=2, position=position))
    rows, cols = torch.nonzero(out[0, 0], as_tuple=True)
    assert len(rows) == 4
    expect_row = {"top": 0, "bottom": 6, "centre": 3}[position.split("-")[0]]
    expect_col = {"left": 0, "right": 6, "centre": 3}[position.split("-")[-1]]
    assert int(rows.min()) == expect_row and int(cols.min()) == expect_col


def test_checkerboard_and_blended_triggers():
    x = torch.full((3, 1, 8, 8), 0.5)
    board = add_trigger(x, BackdoorConfig(size=4, pattern="checkerboard", position="top-left"))[0, 0, :4, :4]
    assert set(board.flatten().tolist()) == {0.0, 1.0} and board[0, 0] != board[0, 1]
    blended = add_trigger(x, BackdoorConfig(pattern="blended", blend=0.2))
    changed = (blended != x).float().mean()
    assert changed > 0.9  # the whole image carries it
    assert torch.allclose(blended[0], blended[1])  # one fixed pattern
    assert float((blended - x).abs().max()) <= 0.2 * 0.5 + 1e-6
    with pytest.raises(ConfigError, match="backdoor.pattern"):
        build(BackdoorConfig, {"pattern": "stripes"}, "backdoor")


def test_departing_client_by_rule():
    assert pick_client("largest", [5, 9, 9, 1]) == 1 and pick_client("median", [5, 9, 7, 1]) == 0
    assert pick_client(3, [1, 1, 1, 1]) == 3
    cfg = tiny(federation={"partition": "dirichlet", "alpha": 0.3}, withdrawal={"client": "largest"})
    sizes = [len(p) for p in federation_data(cfg)[1]]
    who = departing_client(cfg)
    assert sizes[who] == max(sizes) and len(local_data(cfg, who).poisoned_idx) > 0
    with pytest.raises(ConfigError, match="withdrawal.client"):
        tiny(withdrawal={"client": "smallest"})
    with pytest.raises(ConfigError, match="clients_per_round"):
        tiny(federation={"clients_per_round": 9})


def test_client_sampling_is_seeded_and_history_records_participants():
    assert sample_clients([0, 1, 2, 3], 2, 0, 1) == sample_clients([0, 1, 2, 3], 2, 0, 1)
    draws = {tuple(sample_clients(list(range(10)), 3, 0, r)) for r in range(1, 20)}
    assert len(draws) > 5 and all(len(d) == 3 for d in draws)
    cfg = tiny()
    transport = LocalTransport(cfg)
    local = local_data(cfg, 0)
    init = build_model(cfg.model, local.input_shape, local.num_classes).state_dict()
    fit = lambda ids, s, c: aggregate_replies(s, transport.train(ids, s, {**c, "phase": "train"}))  # noqa: E731
    _, history, _, _ = run_fedavg(fit, list(range(5)), init, 4, store_every=1, per_round=2, seed=0)
    assert [len(r.updates) for r in history.rounds] == [2, 2, 2, 2]
    assert [sorted(r.updates) for r in history.rounds] == [sample_clients(list(range(5)), 2, 0, r) for r in (1, 2, 3, 4)]


def test_cosine_round_lr_reaches_the_clients_and_anneals_their_steps():
    """federation.round_lr = "cosine": round 1 trains at the recipe's lr, the last round near 0, and
    the clients' updates shrink with it (the lr goes through the round's config to local_train)."""
    from fedunlearn.federated.rounds import round_lr

    cfg = tiny(federation={"round_lr": "cosine"})
    lr_at = round_lr(cfg.federation)
    rounds = cfg.federation.rounds
    lrs = [lr_at(r) for r in range(1, rounds + 1)]
    assert lrs[0] == cfg.federation.local.lr and lrs[-1] < 0.2 * lrs[0] and lrs == sorted(lrs, reverse=True)
    assert round_lr(tiny().federation) is None
    with pytest.raises(ConfigError, match="round_lr.*'constant', 'cosine'"):
        tiny(federation={"round_lr": "linear"})
    transport = LocalTransport(cfg)
    local = local_data(cfg, 0)
    init = build_model(cfg.model, local.input_shape, local.num_classes).state_dict()
    seen = []

    def fit(ids, s, c):
        seen.append(c["lr"])
        return aggregate_replies(s, transport.train(ids, s, {**c, "phase": "train"}))

    _, history, _, _ = run_fedavg(fit, [0, 1], init, rounds, store_every=1, lr_at=lr_at)
    assert seen == lrs
    first, last = (fedavg.norm(history.rounds[i].updates[0][0]) for i in (0, -1))
    assert last < 0.5 * first


def test_the_attacker_trains_longer_only_in_training_rounds():
    cfg = tiny(backdoor={"local_epochs": 4})
    attacker = local_data(cfg, departing_client(cfg))
    state = build_model(cfg.model, attacker.input_shape, attacker.num_classes).state_dict()
    long, _, _ = local_train(cfg, attacker, state, {"phase": "train", "round": 1})
    short, _, _ = local_train(cfg, attacker, state, {"phase": "unlearn", "round": 1})
    assert fedavg.norm(fedavg.delta(long, state)) > 1.5 * fedavg.norm(fedavg.delta(short, state))


def partial_context(cfg: Config):
    transport = LocalTransport(cfg)
    local = local_data(cfg, 0)
    make = lambda: build_model(cfg.model, local.input_shape, local.num_classes)  # noqa: E731
    init = make().state_dict()
    fit = lambda ids, s, c: aggregate_replies(s, transport.train(ids, s, {**c, "phase": "train"}))  # noqa: E731
    state, history, _, _ = run_fedavg(fit, list(range(cfg.federation.num_clients)), init, cfg.federation.rounds,
                                      store_every=1, per_round=cfg.federation.clients_per_round, seed=0)
    departing = departing_client(cfg)
    return FedContext(global_state=state, initial_state=init, history=history, departing=departing,
                      remaining=[c for c in range(cfg.federation.num_clients) if c != departing],
                      num_clients=cfg.federation.num_clients, num_classes=10, input_shape=local.input_shape,
                      make_model=make, fed_cfg=cfg.federation, device=get_device("cpu"), transport=transport,
                      train_rounds=cfg.federation.rounds, sample_counts={c: len(local_data(cfg, c).train)
                                                                         for c in range(cfg.federation.num_clients)})


def test_methods_handle_rounds_the_departing_client_missed():
    cfg = tiny(federation={"rounds": 5})
    ctx = partial_context(cfg)
    took_part = len(ctx.history.client_rounds(ctx.departing))
    assert 0 < took_part < 5
    sub = load_method("subtract").unlearn(ctx, load_method("subtract").Config())
    assert sub.stats["stored_rounds_used"] == took_part
    # its share of the trajectory counts the rounds it missed as 0
    shares = [r.updates[ctx.departing][1] / r.total_samples() for r in ctx.history.client_rounds(ctx.departing)]
    assert sub.stats["client_share"] == pytest.approx(sum(shares) / 5)
    retrain = load_method("retrain").unlearn(ctx, load_method("retrain").Config())
    assert ctx.traffic.messages_to_remaining == 5 * 2 and ctx.traffic.messages_to_departing == 0
    assert retrain.rounds == 5
    pga = load_method("pga")
    assert pga.reference_model(ctx) is not None


def linear_history(partial: bool = False):
    """Three rounds, three clients whose updates simply add up; with `partial`, the departing
    client 0 sits out round 2."""
    from fedunlearn.federated.history import History, StoredRound

    vec = lambda *v: {"w": torch.tensor(v, dtype=torch.float32)}  # noqa: E731
    w0 = vec(0.0, 0.0)
    ups = {0: (vec(1.0, 0.0), 2), 1: (vec(0.0, 1.0), 1), 2: (vec(0.0, 3.0), 3)}
    history, state, retrained = History(store_every=1), w0, w0
    for rnd in (1, 2, 3):
        present = {c: u for c, u in ups.items() if not (partial and rnd == 2 and c == 0)}
        history.rounds.append(StoredRound(rnd, state, dict(present)))
        state = fedavg.apply_updates(state, list(present.values()))
        retrained = fedavg.apply_updates(retrained, [present[1], present[2]])
    ctx = FedContext(global_state=state, initial_state=w0, history=history, departing=0, remaining=[1, 2],
                     num_clients=3, num_classes=2, input_shape=(2,), make_model=None, fed_cfg=None,
                     device=torch.device("cpu"), transport=None, train_rounds=3)
    return ctx, retrained


@pytest.mark.parametrize("partial", [False, True])
def test_server_only_baselines_are_exact_for_a_linear_model(partial):
    ctx, retrained = linear_history(partial)
    replay = load_method("replay").unlearn(ctx, load_method("replay").Config())
    assert torch.allclose(replay.state["w"], retrained["w"]) and len(replay.curve) == 3
    fedrecovery = load_method("fedrecovery")
    exact = fedrecovery.unlearn(ctx, fedrecovery.Config(sensitivity_frac=0.0))
    assert torch.allclose(exact.state["w"], retrained["w"], atol=1e-6) and exact.stats["noise_sigma"] == 0.0
    noisy = fedrecovery.unlearn(ctx, fedrecovery.Config(epsilon=1.0))
    assert noisy.stats["noise_sigma"] > 0 and not torch.allclose(noisy.state["w"], retrained["w"])
    assert ctx.traffic.messages_to_remaining == 0 and ctx.traffic.messages_to_departing == 0


def test_server_only_baselines_on_a_partial_federation():
    ctx = partial_context(tiny(federation={"rounds": 3}))
    diagonal = load_method("fedrecover").unlearn(ctx, load_method("fedrecover").Config(hessian="lbfgs_diagonal"))
    assert all(torch.isfinite(v).all() for v in diagonal.state.values())
    for name in ("replay", "fedrecovery", "fedrecover"):
        result = load_method(name).unlearn(ctx, load_method(name).Config())
        assert all(torch.isfinite(v).all() for v in result.state.values())
    assert ctx.traffic.messages_to_remaining == 0


def test_the_report_says_what_was_forgotten():
    from fedunlearn.federated.report import forgotten

    rows = [{"method": "original", "test_acc": 0.9, "forget_acc": 0.95, "backdoor_asr": 0.9},
            {"method": "retrain", "test_acc": 0.88, "forget_acc": 0.5, "backdoor_asr": 0.01},
            {"method": "subtract", "test_acc": 0.6, "forget_acc": 0.3, "backdoor_asr": 0.0},
            {"method": "continue", "test_acc": 0.89, "forget_acc": 0.9, "backdoor_asr": 0.7},
            {"method": "good", "test_acc": 0.875, "forget_acc": 0.52, "backdoor_asr": 0.02}]
    text = forgotten(rows, 3, 120, backdoor=True)
    assert "client 3 (120 samples)" in text and "90.0% -> 1.0%" in text
    assert "retrain: good." in text and "retrain + 3%): continue." in text and "lost test accuracy: subtract." in text


def test_the_attackers_boost_scales_what_it_sends_in_training_rounds_only():
    plain_cfg = tiny(backdoor={"local_epochs": 2})
    boosted_cfg = tiny(backdoor={"local_epochs": 2, "boost": 3.0})
    replacing_cfg = tiny(backdoor={"local_epochs": 2, "boost_by": "participants"})  # gamma = 2 clients per round
    attacker = local_data(plain_cfg, departing_client(plain_cfg))
    state = build_model(plain_cfg.model, attacker.input_shape, attacker.num_classes).state_dict()
    by_share_cfg = tiny(backdoor={"local_epochs": 2, "boost": 0.5, "boost_by": "share"})
    sent = {name: fedavg.delta(local_train(c, attacker, state, {"phase": "train", "round": 1})[0], state)
            for name, c in (("plain", plain_cfg), ("boosted", boosted_cfg), ("replacing", replacing_cfg),
                            ("by_share", by_share_cfg))}
    plain = fedavg.norm(sent["plain"])
    assert fedavg.norm(sent["boosted"]) == pytest.approx(3.0 * plain, rel=1e-5)
    assert fedavg.norm(sent["replacing"]) == pytest.approx(2.0 * plain, rel=1e-5)
    sizes = [len(p) for p in federation_data(plain_cfg)[1]]  # share: 0.5 x 2 per round x mean size / own size
    share_gamma = max(1.0, np.mean(sizes) / len(attacker.train))
    assert fedavg.norm(sent["by_share"]) == pytest.approx(share_gamma * plain, rel=1e-5)
    # an honest client and the attacker's unlearning rounds are untouched
    unlearn = [local_train(c, attacker, state, {"phase": "unlearn", "round": 1})[0] for c in (plain_cfg, boosted_cfg)]
    assert all(torch.equal(unlearn[0][k], unlearn[1][k]) for k in state)
    honest = local_data(boosted_cfg, next(c for c in range(5) if c != departing_client(boosted_cfg)))
    same = [local_train(c, honest, state, {"phase": "train", "round": 1})[0] for c in (plain_cfg, boosted_cfg)]
    assert all(torch.equal(same[0][k], same[1][k]) for k in state)


def test_boost_rules_size_gamma_and_never_scale_down():
    share = BackdoorConfig(fraction=0.5, boost=0.5, boost_by="share")
    assert share.gamma(4, own_size=50, mean_size=100) == 4.0   # a small client: 0.5 x 4 x 100 / 50
    assert share.gamma(3, own_size=300, mean_size=100) == 1.0  # the largest client already weighs a lot
    assert BackdoorConfig(boost=0.5, boost_by="participants").gamma(10) == 5.0
    assert BackdoorConfig(boost=2.0).gamma(10) == 2.0 and not BackdoorConfig().boosted


def test_boost_is_range_checked():
    with pytest.raises(ConfigError, match="backdoor.boost"):
        tiny(backdoor={"boost": 0.0})
    with pytest.raises(ConfigError, match="boost_by"):
        tiny(backdoor={"boost_by": "everyone"})


def test_neurotoxin_mask_excludes_the_largest_coordinates_of_the_estimate():
    estimate = {"a": torch.tensor([[0.1, -5.0], [0.2, 0.3]]), "b": torch.tensor([4.0, -0.05, 0.0, 1.0])}
    allowed = allowed_coordinates(estimate, 0.25)  # 2 of 8 coordinates: the two largest in magnitude, across entries
    assert allowed["a"].tolist() == [[True, False], [True, True]] and allowed["b"].tolist() == [False, True, True, True]
    assert all(m.all() for m in allowed_coordinates(estimate, 0.0).values())
    start = {"a": torch.zeros(2, 2), "b": torch.zeros(4), "bn.running_mean": torch.zeros(1)}
    trained = {"a": torch.ones(2, 2), "b": torch.ones(4), "bn.running_mean": torch.ones(1)}
    out = project(trained, start, allowed)
    assert out["a"].tolist() == [[1.0, 0.0], [1.0, 1.0]] and out["bn.running_mean"].item() == 1.0


def test_the_durable_attacker_leaves_the_benign_top_coordinates_unchanged_in_what_it_sends():
    plain_cfg = tiny(backdoor={"local_epochs": 2, "boost": 2.0})
    durable_cfg = tiny(backdoor={"local_epochs": 2, "boost": 2.0, "mask_top": 0.5})
    attacker = local_data(durable_cfg, departing_client(durable_cfg))
    state = build_model(durable_cfg.model, attacker.input_shape, attacker.num_classes).state_dict()
    sent = fedavg.delta(local_train(durable_cfg, attacker, state, {"phase": "train", "round": 1})[0], state)
    allowed = durable_mask(durable_cfg, attacker, state, round_seed(attacker, {"phase": "train", "round": 1}))
    excluded = sum(int((~m).sum()) for m in allowed.values()) / sum(m.numel() for m in allowed.values())
    assert excluded == pytest.approx(0.5, abs=0.01)
    assert all(torch.count_nonzero(sent[k][~allowed[k]]) == 0 for k in allowed)
    assert all(torch.count_nonzero(sent[k][allowed[k]]) > 0 for k in allowed if allowed[k].any())
    # what it does send still moves the model, and differs from the unmasked attacker's update
    plain = fedavg.delta(local_train(plain_cfg, attacker, state, {"phase": "train", "round": 1})[0], state)
    assert fedavg.norm(sent) > 0 and not all(torch.equal(sent[k], plain[k]) for k in sent)
    # honest clients and the attacker's unlearning rounds are untouched
    for c in (local_data(durable_cfg, next(c for c in range(5) if c != departing_client(durable_cfg))), attacker):
        phase = "train" if c is not attacker else "unlearn"
        a, b = (local_train(cfg, c, state, {"phase": phase, "round": 1})[0] for cfg in (plain_cfg, durable_cfg))
        assert all(torch.equal(a[k], b[k]) for k in state)


def test_mask_top_is_range_checked():
    with pytest.raises(ConfigError, match="backdoor.mask_top"):
        tiny(backdoor={"mask_top": 1.0})
    with pytest.raises(ConfigError, match="backdoor.mask_top"):
        tiny(backdoor={"mask_top": -0.1})
    with pytest.raises(ConfigError, match="clean samples"):
        tiny(backdoor={"mask_top": 0.5, "fraction": 1.0})


def test_non_target_source_triggers_only_samples_of_other_classes():
    x, y = torch.zeros(10, 1, 8, 8), torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 3, 4])  # a client mostly of the target
    chosen_any = poison(x, y, BackdoorConfig(fraction=0.5, target=0), seed=0)[2]
    _, py, chosen = poison(x, y, BackdoorConfig(fraction=0.5, target=0, source="non_target"), seed=0)
    assert len(chosen_any) == 5 and sorted(chosen.tolist()) == [6, 7, 8, 9]  # capped at the 4 non-target samples
    assert (py[chosen] == 0).all() and torch.equal(py[:6], y[:6])
    with pytest.raises(ConfigError, match="backdoor.source"):
        tiny(backdoor={"source": "others"})
