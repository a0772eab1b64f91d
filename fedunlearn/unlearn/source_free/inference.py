"""Fast, exact forward passes for the server's repair (the same models, the same numbers).

The repair's inference is many forward passes of small CNNs over the same synthetic check
samples on the server's CPU thread(s): the original's and the reference's logits, and one
prediction per remaining client's local model (support.py). Three things cut its time without
changing what is computed:

- channels-last memory (NHWC) for image models, in batches that fit in cache: oneDNN's
  convolutions run 3-4x faster so on CPUs (the withdrawal CNN, one thread: 0.5 s per 1,000
  images before, 0.12-0.15 s after); the outputs are the same up to float rounding (largest
  logit difference 6e-8, no changed prediction, measured). Models without 4-D weights (MLPs,
  logistic regression) are left as they are.
- lean activations (`lean_activations`, for the inference here and the generator's training):
  a ReLU before max-pooling runs after it, on a quarter of the values, and activations run in
  place instead of allocating a second large buffer. Bit for bit the same outputs and input
  gradients.
- no repeated work: the logits of a model on the check samples are computed once and reused
  (pipeline.py), and the local models are loaded one after another into one module instead of
  building a fresh model each (building one initialises all its weights at random first).

Inference runs under `torch.inference_mode` (no autograd bookkeeping); its outputs are only
compared and blended, never differentiated.
"""

from __future__ import annotations

import collections
import contextlib

import torch
from torch import nn


# Inference batch on the CPU: a batch of 64-128 images keeps a small CNN's feature maps in cache;
# per 1,000 images, channels-last, one thread (loaded machine): 0.12-0.15 s at 64-128, 0.23 s at 256,
# 0.25-0.3 s at 512-1,000, 0.5 s in the default layout (measured with /tmp bench, 2026-12-01). With
# lean_activations, the support check's 20 CNNs over 1,000 samples (CPU time, loaded machine, median
# of 4 interleaved): 1.39 s at 128, 1.33 s at 64, 1.31 s at 32.
BATCH = 64


def channels_last(model: nn.Module) -> nn.Module:
    """In place: 4-D weights in channels-last memory (conv models); anything else unchanged."""
    if any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


# Layers whose output is a fresh tensor that nothing else keeps (not even their own backward pass),
# so the activation right after them may overwrite it.
_FRESH_OUTPUT = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd)


def _monotone(layer: nn.Module) -> bool:
    """A ReLU or a LeakyReLU with slope >= 0: elementwise and non-decreasing."""
    return type(layer) in (nn.ReLU, nn.LeakyReLU) and getattr(layer, "negative_slope", 0.0) >= 0


def _max_pool(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.pooling._MaxPoolNd) and not layer.return_indices


@contextlib.contextmanager
def lean_activations(*models: nn.Module):
    """Within the block, inside every nn.Sequential of `models`: an activation (ReLU, LeakyReLU
    with slope >= 0) directly followed by max-pooling runs after it instead, and an activation
    directly after a convolution, linear, BatchNorm or max-pooling layer runs in place. The
    models are restored after the block.

    Both are exact, outputs and input gradients bit for bit (tests/test_source_free_speed.py):
    - a non-decreasing elementwise function commutes with a maximum, relu(max(a, b)) =
      max(relu(a), relu(b)), and the pooling picks the same element (where the maximum is not
      positive both gradients are zero); the activation then touches a quarter of the values
      (2x2 pooling). Both layers hold no weights, so the state_dict keys do not change.
    - in a Sequential a layer's output goes to the next layer only, so overwriting it changes
      no other computation, and none of those layers keeps its output for its backward pass
      (autograd's version check would raise, not silently differ, if one did).
    Measured, one thread, loaded machine: the withdrawal CNN's forward pass over 1,000 images
    (batch 128) 93 -> 64 ms CPU; a generator step (width 16, batch 64, two CNN judges) 44 -> 38 ms."""
    swapped, inplace = [], []
    # each Sequential once, however often it or its model is listed; an activation module that is
    # registered twice (also called outside this Sequential) never runs in place
    unique = {id(model): model for model in models}.values()
    uses = collections.Counter(id(m) for model in unique for _, m in model.named_modules(remove_duplicate=False))
    sequentials = {id(m): m for model in unique for m in model.modules() if isinstance(m, nn.Sequential)}
    for seq in sequentials.values():
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            if _monotone(seq._modules[a]) and _max_pool(seq._modules[b]):
                seq._modules[a], seq._modules[b] = seq._modules[b], seq._modules[a]
                swapped.append((seq, a, b))
        layers = list(seq)
        for before, act in zip(layers, layers[1:]):
            if isinstance(before, _FRESH_OUTPUT) and _monotone(act) and not act.inplace and uses[id(act)] == 1:
                act.inplace = True
                inplace.append(act)
    try:
        yield
    finally:
        for act in inplace:
            act.inplace = False
        for seq, a, b in reversed(swapped):
            seq._modules[a], seq._modules[b] = seq._modules[b], seq._modules[a]


def as_input(x: torch.Tensor, device) -> torch.Tensor:
    """`x` on `device`, channels-last when it is a batch of images."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def logits(model: nn.Module, x: torch.Tensor, device, batch_size: int = BATCH) -> torch.Tensor:
    """The model's logits on every input, on the CPU (the model is left in eval mode, channels-last).

    The model is moved and converted outside inference mode: parameters made inside it would be
    inference tensors, which a later distillation of a copy of the model could not train."""
    channels_last(model.to(device).eval())
    with torch.inference_mode(), lean_activations(model):
        out = [model(as_input(x[i:i + batch_size], device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)  # outside inference mode: a normal tensor again
