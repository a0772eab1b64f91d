"""Surviving-step removal (fedunlearn/federated/removal.py) on hand-built histories: plain tensors."""

import torch

from fedunlearn.federated import fedavg
from fedunlearn.federated.history import History, StoredRound
from fedunlearn.federated.removal import surviving_removal


def _state(*values):
    return {"w": torch.tensor(values, dtype=torch.float32)}


def _history(rounds):
    """rounds: list of {client: (update values, samples)}; returns the history and the final model."""
    history, state = History(store_every=1), _state(0.0, 0.0)
    for rnd, ups in enumerate(rounds, start=1):
        updates = {cid: (_state(*u), n) for cid, (u, n) in ups.items()}
        history.rounds.append(StoredRound(rnd, state, updates))
        state = fedavg.apply_updates(state, list(updates.values()))
    return history, state


def test_a_step_no_later_round_touched_is_removed_whole_and_the_others_reweighted():
    # one round: client 0 (weight 1/2) moved +2 along x, client 1 (1/2) moved +2 along y
    history, final = _history([{0: ((2.0, 0.0), 10), 1: ((0.0, 2.0), 10)}])
    state, stats = surviving_removal(history, 0, final)
    # retraining without client 0 gives client 1's step at full weight: (0, 2)
    assert torch.allclose(state["w"], torch.tensor([0.0, 2.0]))
    assert stats["survival_min"] == 1.0 and stats["stored_rounds_used"] == 1


def test_a_step_later_rounds_undid_is_not_removed_again():
    # round 1: client 0 pushes x by +1 (its contribution 0.5); round 2: client 1 alone pulls x back by the same 0.5
    history, final = _history([{0: ((1.0, 0.0), 10), 1: ((0.0, 0.0), 10)}, {1: ((-0.5, 1.0), 10)}])
    assert torch.allclose(final["w"], torch.tensor([0.0, 1.0]))
    state, stats = surviving_removal(history, 0, final, rescale=False)
    assert stats["survival_min"] == 0.0          # nothing of the step survived
    assert torch.allclose(state["w"], final["w"])  # so nothing is removed (subtract would go to x = -0.5)


def test_a_half_undone_step_is_half_removed():
    history, final = _history([{0: ((1.0, 0.0), 10), 1: ((0.0, 0.0), 10)}, {1: ((-0.25, 0.0), 10)}])
    state, stats = surviving_removal(history, 0, final, rescale=False)
    assert abs(stats["survival_mean"] - 0.5) < 1e-6
    assert torch.allclose(state["w"], torch.tensor([0.0, 0.0]), atol=1e-6)
