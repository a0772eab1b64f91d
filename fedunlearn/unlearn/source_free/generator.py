"""Phase 1 of source-free unlearning (Ahmed et al., "Towards Source-Free Machine Unlearning", CVPR 2025):
knowledge reconstruction. A label-conditioned generator is trained against a frozen model so
that it synthesizes stand-in data for training data the server never sees.

The generator takes noise plus a one-hot label. Conditioning matters: an unconditioned
generator trained with cross-entropy against randomly drawn labels is minimised by uniform
predictions, not by confident samples. Losses, after DAFL / DeepInversion:
  - cross-entropy of the frozen model on G(z, y) against y (confident, correctly labelled);
  - class balance: minus the entropy of the batch's mean prediction;
  - diversity: two noises with the same labels must give different images (mode seeking);
  - BatchNorm statistics matching where the model has BatchNorm: the batch's per-channel mean
    and variance at each BatchNorm input must match the running statistics, which pulls the
    samples toward the statistics of the real training data.
The frozen model judges a randomly shifted (and flipped) view of each batch, as DeepInversion
does. Besides giving more natural samples, this keeps pixel-exact shortcuts out of them: on
a backdoored federation an unaugmented generator can paint the trigger patch onto the samples
of the target class, and distilling on such samples re-teaches the backdoor (docs/findings.md).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.training import frozen, seed_everything
from fedunlearn.unlearn.source_free.inference import BATCH, channels_last, lean_activations


@dataclass(frozen=True)
class GeneratorConfig:
    steps: int = 60           # enough on small models: more steps gave no better distillation (measured)
    batch_size: int = 64
    lr: float = 1e-2
    noise_dim: int = 64
    width: int = 32           # channels of the first feature map; the generator stays small
    w_balance: float = 1.0
    w_diversity: float = 0.1
    w_bn: float = 1.0         # ignored when the model has no BatchNorm
    shift: float = 0.1        # random translation of the judged view, up to this fraction of the side
    flip: bool = False        # horizontal flip of the judged view, half of the batches: only for
                              # data sets whose classes are mirror-symmetric (clothes yes, digits no)

    def __post_init__(self):
        check_range("generator.steps", self.steps, 0)
        check_range("generator.batch_size", self.batch_size, 2)
        check_range("generator.lr", self.lr, 0.0)
        check_range("generator.noise_dim", self.noise_dim, 1)
        check_range("generator.width", self.width, 4)
        check_range("generator.shift", self.shift, 0.0, 0.5)
        for name in ("w_balance", "w_diversity", "w_bn"):
            check_range(f"generator.{name}", getattr(self, name), 0.0)


class Generator(nn.Module):
    """(noise, label) -> image in [0, 1] of `input_shape`: a dense layer, two upsampling convs."""

    def __init__(self, input_shape, num_classes: int, noise_dim: int = 64, width: int = 64):
        super().__init__()
        channels, height, wide = input_shape
        self.input_shape, self.num_classes, self.noise_dim = tuple(input_shape), num_classes, noise_dim
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(wide / 4)
        self.dense = nn.Sequential(nn.Linear(noise_dim + num_classes, width * self.h0 * self.w0),
                                   nn.BatchNorm1d(width * self.h0 * self.w0), nn.LeakyReLU(0.2))
        self.width = width
        self.convs = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2), nn.Conv2d(width // 2, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.dense(torch.cat([z, F.one_hot(y, self.num_classes).float()], dim=1))
        x = self.convs(h.view(len(z), self.width, self.h0, self.w0))
        if x.shape[-2:] != self.input_shape[-2:]:  # sizes not divisible by 4, e.g. 30x30
            x = F.interpolate(x, size=self.input_shape[-2:], mode="bilinear", align_corners=False)
        return x


def random_view(x: torch.Tensor, shift: float, flip: bool) -> torch.Tensor:
    """The batch translated by a random offset of up to `shift` * side (zero padding), and
    flipped left-right with probability 1/2; one draw for the whole batch."""
    pad = round(shift * x.shape[-1])
    if pad > 0:
        dx, dy = torch.randint(-pad, pad + 1, (2,)).tolist()
        x = translated(x, -dy, -dx, pad)
    if flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x


def translated(t: torch.Tensor, rows: int, cols: int, pad: int | None = None) -> torch.Tensor:
    """t (..., H, W) moved `rows` down and `cols` right, zero-filled (what leaves the image is cut).

    `pad` (at least the offset) fixes the padding, and so the result's memory strides: the convolutions
    a padded-and-cut batch goes through round differently with other strides, so random_view pads by
    its largest offset every time, as it always has (bit-for-bit the same samples)."""
    k = max(abs(rows), abs(cols)) if pad is None else pad
    if k == 0:
        return t
    h, w = t.shape[-2:]
    return F.pad(t, (k, k, k, k))[..., k - rows:k - rows + h, k - cols:k - cols + w]


def draw_labels(classes: torch.Tensor, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Balanced labels: each class of `classes` the same number of times (up to one), shuffled."""
    reps = torch.arange(n) % len(classes)
    return classes[reps[torch.randperm(n, generator=gen)]]


def draw(generator: Generator, classes: torch.Tensor, n: int, device) -> torch.Tensor:
    """A fresh batch of n synthetic inputs with balanced labels, on `device` (global RNG; for
    training loops: `sample` is the seeded, reproducible set)."""
    return draw_labelled(generator, classes, n, device)[0]


def draw_labelled(generator: Generator, classes: torch.Tensor, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`draw`'s batch and the labels it was drawn as."""
    y = draw_labels(classes, n).to(device)
    return generator(torch.randn(n, generator.noise_dim, device=device), y), y


@torch.no_grad()
def sample(generator: Generator, classes, n: int, device, seed: int = 0,
           batch_size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic inputs with balanced labels from `classes`, on the CPU.

    The noise and labels are drawn for all n at once, then generated in cache-sized batches: in
    eval mode each sample depends on its own noise only, and the samples are bit for bit those of
    one big batch (tests/test_source_free_speed.py), in a third of the time (1,000 samples, width
    16, one thread, loaded machine: 170 -> 62 ms CPU)."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    y = draw_labels(classes, n, gen)
    z = torch.randn(n, generator.noise_dim, generator=gen)
    generator.to(device).eval()
    with lean_activations(generator):
        x = [generator(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device)).cpu()
             for i in range(0, n, batch_size)]
    return torch.cat(x), y


class BatchNormMatcher:
    """Forward hooks on every BatchNorm layer of a frozen model: after a forward pass, `loss()`
    is the summed distance between the batch statistics of each BatchNorm input and the
    layer's running statistics (DeepInversion, Yin et al. 2020)."""

    def __init__(self, model: nn.Module):
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _hook(self, module, inputs, _output):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        self.terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def __len__(self) -> int:
        return len(self.handles)

    def loss(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def train_generator(model: nn.Module, input_shape, num_classes: int, cfg: GeneratorConfig, device,
                    classes=None, seed: int = 0, judge: nn.Module | None = None) -> tuple[Generator, dict]:
    """Train a generator against the frozen `model` (left unchanged, in eval mode).

    `classes` restricts the conditioning labels (the retained classes); default all.
    `judge`, a second frozen model, must also give each sample its label (its cross-entropy is
    added): samples both models recognise, so a shortcut that only `model` knows, such as a
    trigger only the departing client taught, no longer earns a sample its label.
    Returns the generator and stats: the last step's losses and the model's agreement with
    the conditioning labels on that step's (shifted / flipped) view.
    """
    start = time.perf_counter()
    seed_everything(seed)
    classes = torch.as_tensor(list(range(num_classes)) if classes is None else list(classes), dtype=torch.long)
    # The frozen models judge in channels-last memory (inference.py): the same computation, and on
    # CPUs a quarter less time per step, mostly in max-pooling (profiled: 2.9 -> 2.2 s per 20 steps,
    # width 16, batch 64, one thread). The generator itself keeps the default layout.
    model = channels_last(model.to(device).eval())
    if judge is not None:
        judge = channels_last(copy.deepcopy(judge).to(device).eval().requires_grad_(False))
    generator = Generator(input_shape, num_classes, cfg.noise_dim, cfg.width).to(device).train()
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    bn = BatchNormMatcher(model)
    half = cfg.batch_size // 2
    stats = {"generator_steps": cfg.steps, "bn_layers": len(bn)}
    # Lean activations in the judges and the generator (inference.py: ReLU after max-pooling, in
    # place): the same samples bit for bit (tests/test_source_free_speed.py), 13% less time per step.
    try:
        with frozen(model), lean_activations(*([model, generator] if judge is None else [model, judge, generator])):
            for _ in range(cfg.steps):
                # Two noises per label: the pair gives the diversity (mode seeking) term.
                y = draw_labels(classes, half).repeat(2).to(device)
                z = torch.randn(2 * half, cfg.noise_dim, device=device)
                x = generator(z, y)
                view = random_view(x, cfg.shift, cfg.flip)
                logits = model(view)
                ce = F.cross_entropy(logits, y)
                if judge is not None:
                    ce = ce + F.cross_entropy(judge(view), y)
                mean_p = F.softmax(logits, dim=1).mean(0)
                balance = (mean_p * torch.log(mean_p + 1e-8)).sum()  # minus the entropy
                spread = (x[:half] - x[half:]).abs().mean() / (z[:half] - z[half:]).abs().mean()
                diversity = 1.0 / (spread + 1e-5)
                bn_loss = bn.loss()
                loss = ce + cfg.w_balance * balance + cfg.w_diversity * diversity + cfg.w_bn * bn_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if cfg.steps:  # the last step's numbers, read once after the loop (no per-step synchronisation)
            stats.update(gen_ce=ce.item(), gen_bn=float(bn_loss.detach()), gen_diversity=diversity.item(),
                         gen_agreement=(logits.argmax(1) == y).float().mean().item())
    finally:
        bn.remove()
    stats["generator_s"] = time.perf_counter() - start
    return generator.eval(), stats
