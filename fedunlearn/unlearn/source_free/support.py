"""What the remaining clients know, per class, estimated from what a federated server holds.

A source-free repair distils a damaged model from a teacher on synthetic samples. The global
model is a poor teacher on its own: it also holds what only the departing client taught
(its backdoor, a class that only it had), and distilling from it gives that back. The
server cannot retrain without the client, but it holds each client's stored update, hence
each client's *local model* from the last round the client took part in (the global model
it was sent plus its update). A local model trained on data without class c stops
recognising c; one trained on c keeps it. So, per class c,

    support_c = sum_{i remaining} n_i * recall_i(c) / sum_{i remaining} n_i,

the sample-weighted recall of the remaining clients' local models on synthetic samples
that the global model puts in class c, estimates how much of c the remaining clients would
teach. The repair's teacher is then, on a sample x whose class under the global model is c,

    p_teacher(x) = support_c * p_global(x) + (1 - support_c) * p_reference(x),

where the reference is the model with the departing client's updates removed: classes the
remaining clients hold are restored from the global model, classes only the departing client
held stay as the reference has them. No data: only the stored updates, sample counts and
synthetic samples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.unlearn.source_free.inference import BATCH, as_input, channels_last, lean_activations

State = dict[str, torch.Tensor]


def local_models(history, clients, sample_counts: dict[int, int] | None = None) -> list[tuple[State, int]]:
    """(local state, samples) for each of `clients` from the last stored round it took part in
    (a client never stored is left out). The local state is that round's global model plus the
    client's update; integer buffers come from the round's global model."""
    out = []
    for cid in clients:
        rounds = history.client_rounds(cid)
        if not rounds:
            continue
        stored = rounds[-1]
        update, n = stored.updates[cid]
        state = {k: v + update[k] if k in update else v.clone() for k, v in stored.global_state.items()}
        out.append((state, int((sample_counts or {}).get(cid, n))))
    return out


def shippable(locals_: list[tuple[State, int]]) -> list[tuple[dict, int]]:
    """The local states with numpy arrays for tensors, to pass to a Ray task: Ray pickles a torch
    tensor argument (a copy in, a copy out) but maps a numpy array from its object store without
    copying. Measured, 20 local states of the scale config's CNN (28 MB), loaded machine: a round
    trip to the server worker 0.10-0.28 s as tensors, 0.04-0.08 s as arrays. A tensor numpy cannot
    hold (bfloat16, on a GPU) stays a tensor; class_support takes either."""
    def array(v: torch.Tensor):
        try:
            return v.detach().numpy()
        except TypeError:
            return v
    return [({k: array(v) for k, v in state.items()}, n) for state, n in locals_]


def as_tensors(state: dict) -> State:
    """A state of tensors from one of `shippable`'s (a copy of each array: Ray's are read-only)."""
    return {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def class_support(make_model: Callable[[], nn.Module], locals_: list[tuple[State, int]], x: torch.Tensor,
                  labels: torch.Tensor, num_classes: int, device, batch_size: int = BATCH) -> torch.Tensor:
    """Sample-weighted mean over the local models (states of tensors, or `shippable`'s arrays) of
    their recall on the inputs of each label (a class with no input gets support 1: nothing says
    it is missing).

    One module is built and each local state loaded into it in turn (inference.py: channels-last,
    inference mode, activations in place), and the inputs are moved to the device once: a
    forward pass per local model is the whole cost."""
    support = torch.zeros(num_classes)
    total = sum(n for _, n in locals_)
    if not locals_ or total == 0:
        return torch.ones(num_classes)
    counts = torch.bincount(labels, minlength=num_classes).float()
    model = channels_last(make_model().to(device).eval())
    inputs = [as_input(x[i:i + batch_size], device) for i in range(0, len(x), batch_size)]
    with lean_activations(model):
        for state, n in locals_:
            model.load_state_dict(as_tensors(state))
            with torch.inference_mode():
                pred = torch.cat([model(batch).argmax(1).cpu() for batch in inputs])
            hits = torch.bincount(labels[pred == labels], minlength=num_classes).float()
            support += (n / total) * hits / counts.clamp(min=1)
    support[counts == 0] = 1.0
    return support


def blend(original_logits: torch.Tensor, reference_logits: torch.Tensor, support: torch.Tensor,
          temperature: float = 1.0) -> torch.Tensor:
    """The blended teacher's probabilities from the two models' logits (see blended_teacher)."""
    return blend_probs(F.softmax(original_logits / temperature, dim=1), F.softmax(reference_logits / temperature, dim=1),
                       support)


def blend_probs(p_orig: torch.Tensor, p_other: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """s_c p_orig + (1 - s_c) p_other, with c the class p_orig puts each input in."""
    weight = support.to(p_orig.device)[p_orig.argmax(1)].unsqueeze(1)
    return weight * p_orig + (1.0 - weight) * p_other


def blended_teacher(original: nn.Module, reference: nn.Module | Callable, support: torch.Tensor,
                    temperature: float = 1.0):
    """p = s_c p_original + (1 - s_c) p_other, with c the original's class for each input; the
    other is the reference model, or any function of the inputs returning probabilities (the
    remaining clients' local ensemble, `local_ensemble`)."""
    original.eval()
    if isinstance(reference, nn.Module):
        reference.eval()
        other = lambda x: F.softmax(reference(x) / temperature, dim=1)  # noqa: E731
    else:
        other = reference

    @torch.no_grad()
    def probs(x: torch.Tensor) -> torch.Tensor:
        return blend_probs(F.softmax(original(x) / temperature, dim=1), other(x), support)

    return probs


def local_ensemble(make_model: Callable[[], nn.Module], locals_: list[tuple[State, int]], device,
                   temperature: float = 1.0):
    """The remaining clients' local models as one teacher: the sample-weighted mean of their
    probabilities (FedDF's ensemble, Lin et al., NeurIPS 2020). A class no remaining client
    recognises gets little probability from it, as it would after retraining without the
    departing client; the blend uses it where that client's class is unsupported, instead of a
    reference that a large removed update can leave near chance everywhere."""
    total = sum(n for _, n in locals_)
    members = []
    for state, n in locals_:
        model = make_model().to(device).eval()
        model.load_state_dict(as_tensors(state))
        model.requires_grad_(False)
        members.append((model, n / total))

    @torch.no_grad()
    def probs(x: torch.Tensor) -> torch.Tensor:
        return sum(w * F.softmax(model(x) / temperature, dim=1) for model, w in members)

    return probs
