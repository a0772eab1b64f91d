"""Fast, exact forward passes for the server's repair (the same models, the same numbers).

The repair's inference is many forward passes of small CNNs over the same synthetic check
samples on the server's CPU thread(s): the original's and the reference's logits, and one
prediction per remaining client's local model (support.py). Two things cut its time without
changing what is computed:

- channels-last memory (NHWC) for image models: oneDNN's convolutions run about twice as fast
  on it on CPUs (measured on the withdrawal CNN: 0.49 -> 0.23 s per 1,000 images, one thread);
  the weights and outputs are the same up to float rounding. Models without 4-D weights (MLPs,
  logistic regression) are left as they are.
- no repeated work: the logits of a model on the check samples are computed once and reused
  (pipeline.py), and the local models are loaded one after another into one module instead of
  building a fresh model each (building one initialises all its weights at random first).

Inference runs under `torch.inference_mode` (no autograd bookkeeping); its outputs are only
compared and blended, never differentiated.
"""

from __future__ import annotations

import torch
from torch import nn


def channels_last(model: nn.Module) -> nn.Module:
    """In place: 4-D weights in channels-last memory (conv models); anything else unchanged."""
    if any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def as_input(x: torch.Tensor, device) -> torch.Tensor:
    """`x` on `device`, channels-last when it is a batch of images."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.inference_mode()
def logits(model: nn.Module, x: torch.Tensor, device, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits on every input, on the CPU (the model is left in eval mode)."""
    model.to(device).eval()
    channels_last(model)
    return torch.cat([model(as_input(x[i:i + batch_size], device)).float().cpu()
                      for i in range(0, len(x), batch_size)])
