"""A durable backdoor: the attacker moves only coordinates that honest clients rarely change.

Neurotoxin (Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022): the
attacker estimates the benign update, drops its top-k% coordinates by magnitude and trains its
backdoor by projected gradient descent on the rest, so the honest rounds after its last one
(under partial participation, often several) do not overwrite what it planted.

The benign estimate here is the attacker's own update on its clean samples from the global model
it just received. The paper uses the change of the global model since the attacker's last round;
that needs state kept between rounds, which a Flower ClientApp does not hold (each round's reply is
computed from the received arrays and the client's data), and under partial participation the
attacker's previous global can be many rounds old or absent in its first round. Its clean update is
available in every round it is sampled, from what it holds then.

Plain tensor functions, no framework: client.py calls them in the attacker's training rounds.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from fedunlearn.federated.fedavg import State

Mask = dict[str, torch.Tensor]  # per parameter name: True where the attacker may move


def allowed_coordinates(estimate: State, top: float) -> Mask:
    """True everywhere except the `top` fraction of coordinates of `estimate` largest in magnitude,
    ranked over every entry together (the paper's global top-k; ties at the cut are excluded too)."""
    if not 0.0 <= top < 1.0:
        raise ValueError(f"mask fraction must be in [0, 1), got {top!r}")
    names = list(estimate)
    flat = torch.cat([estimate[k].detach().abs().flatten().float() for k in names]) if names else torch.zeros(0)
    count = int(round(top * flat.numel()))
    if count == 0:
        return {k: torch.ones_like(estimate[k], dtype=torch.bool) for k in names}
    cut = torch.topk(flat, count, sorted=True).values[-1]
    return {k: estimate[k].detach().abs() < cut for k in names}


def project(trained: State, start: State, allowed: Mask) -> State:
    """`trained` on allowed coordinates, `start` on the excluded ones (entries not in `allowed`,
    such as normalisation statistics, are kept as trained)."""
    return {k: torch.where(allowed[k], v, start[k]) if k in allowed else v for k, v in trained.items()}


@contextmanager
def projected_gradients(model: nn.Module, allowed: Mask):
    """While active, every parameter's gradient is zero on its excluded coordinates: training is
    projected gradient descent on the allowed ones (weight decay still touches the excluded ones
    through the optimiser, so the caller projects the result as well)."""
    handles = [p.register_hook(lambda g, keep=allowed[name]: g * keep.to(g.device, g.dtype))
               for name, p in model.named_parameters() if name in allowed]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()

