"""Fast, exact forward passes for the server's repair (the same models, the same numbers).

The repair's inference is many forward passes of small CNNs over the same synthetic check
samples on the server's CPU thread(s): the original's and the reference's logits, and one
prediction per remaining client's local model (support.py). Two things cut its time without
changing what is computed:

- channels-last memory (NHWC) for image models, in batches that fit in cache: oneDNN's
  convolutions run 3-4x faster so on CPUs (the withdrawal CNN, one thread: 0.5 s per 1,000
  images before, 0.12-0.15 s after); the outputs are the same up to float rounding (largest
  logit difference 6e-8, no changed prediction, measured). Models without 4-D weights (MLPs,
  logistic regression) are left as they are.
- activations in place: a ReLU / LeakyReLU right after a convolution, linear or BatchNorm
  layer in an nn.Sequential overwrites that layer's fresh output instead of allocating a
  second large buffer (`inplace_activations`). The values are bit for bit the same, and so are
  input gradients through a frozen model (the generator's judges): none of those layers keeps
  its output for its backward pass, and autograd's version check would raise, not silently
  differ, if one did.
- no repeated work: the logits of a model on the check samples are computed once and reused
  (pipeline.py), and the local models are loaded one after another into one module instead of
  building a fresh model each (building one initialises all its weights at random first).

Inference runs under `torch.inference_mode` (no autograd bookkeeping); its outputs are only
compared and blended, never differentiated.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


# Inference batch on the CPU: a batch of 64-128 images keeps a small CNN's feature maps in cache;
# per 1,000 images, channels-last, one thread (loaded machine): 0.12-0.15 s at 64-128, 0.23 s at 256,
# 0.25-0.3 s at 512-1,000, 0.5 s in the default layout (measured with /tmp bench, 2026-12-01).
BATCH = 128


def channels_last(model: nn.Module) -> nn.Module:
    """In place: 4-D weights in channels-last memory (conv models); anything else unchanged."""
    if any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


# Layers whose output is a fresh tensor that nothing else keeps (not even their own backward pass),
# so the activation right after them may overwrite it.
_FRESH_OUTPUT = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


@contextlib.contextmanager
def inplace_activations(*models: nn.Module):
    """Within the block, each ReLU / LeakyReLU (slope >= 0) that directly follows a convolution,
    linear or BatchNorm layer inside an nn.Sequential runs in place; the flags are restored after.

    Only there is it safe in any model: in a Sequential a layer's output goes to the next layer
    and nowhere else, so overwriting it changes no other computation (a skip connection reads
    the Sequential's input or output, never its inner tensors). Measured, withdrawal CNN, one
    thread, loaded machine (CPU time per 1,000 images, batch 128): 93 -> 64 ms."""
    changed = []
    for model in models:
        for seq in model.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            layers = list(seq)
            for before, act in zip(layers, layers[1:]):
                if (isinstance(before, _FRESH_OUTPUT) and type(act) in (nn.ReLU, nn.LeakyReLU)
                        and getattr(act, "negative_slope", 0.0) >= 0 and not act.inplace):
                    act.inplace = True
                    changed.append(act)
    try:
        yield
    finally:
        for act in changed:
            act.inplace = False


def as_input(x: torch.Tensor, device) -> torch.Tensor:
    """`x` on `device`, channels-last when it is a batch of images."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def logits(model: nn.Module, x: torch.Tensor, device, batch_size: int = BATCH) -> torch.Tensor:
    """The model's logits on every input, on the CPU (the model is left in eval mode, channels-last).

    The model is moved and converted outside inference mode: parameters made inside it would be
    inference tensors, which a later distillation of a copy of the model could not train."""
    channels_last(model.to(device).eval())
    with torch.inference_mode(), inplace_activations(model):
        out = [model(as_input(x[i:i + batch_size], device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)  # outside inference mode: a normal tensor again
