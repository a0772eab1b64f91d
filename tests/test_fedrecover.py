"""fedrecover: the replay corrected by L-BFGS estimates from the stored trajectory (server only)."""

import pytest
import torch

from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.history import History, StoredRound
from fedunlearn.federated.methods import load_method
from fedunlearn.lbfgs import LBFGS


def quadratic_federation(rounds: int = 12, lr: float = 0.3, boost: float = 4.0, diagonal: bool = False):
    """Clients whose update is one gradient step on 0.5 (w - c_i)' A_i (w - c_i); client 0 is an
    attacker that boosts its step. With `diagonal`, the A_i are diagonal and the last coordinate is
    one only the attacker's data has curvature in (where a backdoor sits: the others' loss is flat
    there). Returns (context, retrained weights, original weights)."""
    gen = torch.Generator().manual_seed(0)
    dim, clients = 4, 4
    hessians = []
    for i in range(clients):
        a = torch.randn(dim, dim, generator=gen)
        hessians.append(a @ a.T / dim + 0.5 * torch.eye(dim))
        if diagonal:
            hessians[-1] = torch.diag(torch.rand(dim, generator=gen) + 0.5)
            hessians[-1][-1, -1] = 1.0 if i == 0 else 0.0
    centres = [torch.randn(dim, generator=gen) for _ in range(clients)]
    centres[0] = centres[0] + 3.0

    def update(i, w):
        step = -lr * hessians[i] @ (w - centres[i])
        return step * (boost if i == 0 else 1.0)

    history, w, retrained = History(store_every=1), torch.zeros(dim), torch.zeros(dim)
    counts = {0: 2, 1: 3, 2: 2, 3: 3}
    for rnd in range(1, rounds + 1):
        ups = {i: ({"w": update(i, w)}, n) for i, n in counts.items()}
        history.rounds.append(StoredRound(rnd, {"w": w.clone()}, ups))
        w = fedavg.apply_updates({"w": w}, list(ups.values()))["w"]
        retrained = fedavg.apply_updates({"w": retrained}, [({"w": update(i, retrained)}, counts[i])
                                                            for i in (1, 2, 3)])["w"]
    ctx = FedContext(global_state={"w": w}, initial_state={"w": torch.zeros(dim)}, history=history, departing=0,
                     remaining=[1, 2, 3], num_clients=clients, num_classes=2, input_shape=(dim,), make_model=None,
                     fed_cfg=None, device=torch.device("cpu"), transport=None, train_rounds=rounds)
    return ctx, retrained, w


def test_corrections_take_the_replay_to_retraining_where_plain_replay_overshoots():
    ctx, retrained, original = quadratic_federation()
    plain = load_method("replay").unlearn(ctx, load_method("replay").Config()).state["w"]
    method = load_method("fedrecover")
    result = method.unlearn(ctx, method.Config(history=4, max_correction=10.0))
    recovered = result.state["w"]
    # the stored updates were computed where the attacker had pulled the model: replayed as they are, off
    assert (plain - retrained).norm() > 0.2 * (original - retrained).norm()
    assert (recovered - retrained).norm() < 0.2 * (plain - retrained).norm()
    assert result.stats["corrected_updates"] > 0 and len(result.curve) == 12
    assert ctx.traffic.messages_to_remaining == 0 and ctx.traffic.messages_to_departing == 0


def test_the_diagonal_leaves_alone_what_the_remaining_clients_never_pushed_on():
    """A coordinate only the attacker moved: retraining leaves it at 0, plain replay too; the L-BFGS
    correction's sigma * I gives it curvature the others' loss does not have, and moves it off
    retraining's value; the diagonal secant sees no curvature there and leaves it."""
    ctx, retrained, original = quadratic_federation(diagonal=True)
    method = load_method("fedrecover")
    diagonal = method.unlearn(ctx, method.Config(hessian="diagonal", max_correction=10.0)).state["w"]
    lbfgs = method.unlearn(ctx, method.Config(history=4, max_correction=10.0)).state["w"]
    assert abs(float(original[-1])) > 1.0 and float(retrained[-1]) == 0.0
    assert abs(float(diagonal[-1])) < 0.05 * abs(float(original[-1]))
    assert abs(float(lbfgs[-1])) > 5 * abs(float(diagonal[-1]))
    plain = load_method("replay").unlearn(ctx, load_method("replay").Config()).state["w"]
    assert (diagonal - retrained).norm() < 0.2 * (plain - retrained).norm()
    # L-BFGS on top of that diagonal (B0 = diag) keeps the secant pairs' directions and the zero
    hybrid = method.unlearn(ctx, method.Config(hessian="lbfgs_diagonal", history=4, max_correction=10.0)).state["w"]
    assert abs(float(hybrid[-1])) < 0.05 * abs(float(original[-1]))
    assert (hybrid - retrained).norm() < 0.2 * (plain - retrained).norm()


def test_no_correction_is_plain_replay_and_the_cap_bounds_each_correction():
    ctx, _, _ = quadratic_federation()
    method = load_method("fedrecover")
    plain = load_method("replay").unlearn(ctx, load_method("replay").Config()).state["w"]
    off = method.unlearn(ctx, method.Config(max_correction=0.0))
    assert torch.allclose(off.state["w"], plain, atol=1e-5) and off.stats["corrected_updates"] == 0
    tight = method.unlearn(ctx, method.Config(history=4, max_correction=0.01))
    assert tight.stats["capped_corrections"] > 0
    assert (tight.state["w"] - plain).norm() < (method.unlearn(ctx, method.Config(history=4, max_correction=10.0))
                                                .state["w"] - plain).norm()


def test_pairs_without_positive_curvature_are_not_kept():
    model = LBFGS(history=2)
    assert not model.add_if_curved(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]))
    assert model.add_if_curved(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) and len(model) == 1


@pytest.mark.parametrize("bad", [{"history": 0}, {"max_correction": -1.0}, {"hessian": "newton"}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        load_method("fedrecover").Config(**bad)


def test_no_stored_rounds_is_a_clear_error():
    ctx, _, _ = quadratic_federation()
    ctx.history = History(store_every=1)
    with pytest.raises(Exception, match="store_every"):
        load_method("fedrecover").unlearn(ctx, load_method("fedrecover").Config())


def test_the_source_free_start_is_the_diagonal_replay_computed_once():
    from fedunlearn.federated.methods import source_free_absent

    ctx, _, _ = quadratic_federation()
    replay = load_method("fedrecover").unlearn(ctx, load_method("fedrecover").Config(hessian="diagonal")).state
    subtracted = source_free_absent.reference_state(ctx, "subtract")
    start = source_free_absent.start_state(ctx, source_free_absent.Config(start="recovered"), subtracted)
    assert torch.equal(start["w"], replay["w"])
    as_reference = source_free_absent.reference_state(ctx, "recovered")
    both = source_free_absent.Config(start="recovered", reference="recovered")
    assert source_free_absent.start_state(ctx, both, as_reference) is as_reference  # not replayed twice
    assert source_free_absent.start_state(ctx, source_free_absent.Config(), subtracted) is None


@pytest.mark.parametrize("kind, pooled, per_weight", [("diagonal", False, 3 * (8 + 16)), ("diagonal", True, 3 * 8 + 16),
                                                      ("lbfgs", False, 3 * (8 + 16 * 3))])
def test_the_secant_state_is_the_last_round_in_float32_plus_the_curvature_model(kind, pooled, per_weight):
    """Per remaining client (3 here) a float32 copy of its last round (model and update: 8 bytes a
    weight) and either the float64 sums (16, one set when pooled) or the L-BFGS pairs (16 per
    pair, history 3): the figure that decides whether a federation's replay fits in memory."""
    ctx, _, _ = quadratic_federation(rounds=12, diagonal=kind == "diagonal")
    method = load_method("fedrecover")
    result = method.unlearn(ctx, method.Config(hessian=kind, history=3, pooled=pooled, keep_curve=False))
    assert result.stats["secant_mib"] * 2**20 == per_weight * 4  # 4 weights
