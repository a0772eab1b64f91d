"""The difference search: the stamp on which two models' predictions part most.

The server holds two models that differ by exactly the departing client: the original (global)
model and the reference (the client's stored updates removed), or the student's start. What only
the client taught is where they disagree. Neural Cleanse (Wang et al., IEEE S&P 2019)
reverse-engineers a trigger per assumed target class from one model (targeted.py); this search
needs no target class: it maximises the divergence between the two models' predictions on stamped
synthetic inputs,

    max_{m, p}  mean_x KL(p_original(x') || p_reference(x')),   x' = (1 - m) * x + m * p,

for a mask m of fixed area (mask_budget of the pixels, placed anywhere: corner, centre, any
pattern) and for a full-image blend (m = alpha everywhere, alpha <= blend_max: blended triggers,
Chen et al. 2017). The inputs x are generator samples, so no data is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.training import frozen, seed_everything
from fedunlearn.unlearn.source_free.generator import Generator, draw
from fedunlearn.unlearn.source_free.hold import departs_to
from fedunlearn.unlearn.source_free.stamps import Stamp, TriggerConfig, make_stamp, stamp_mask


def divergence(original: nn.Module, reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mean KL(p_original(x) || p_reference(x)) (differentiable in x)."""
    log_o = F.log_softmax(original(x), dim=1)
    log_r = F.log_softmax(reference(x), dim=1)
    return (log_o.exp() * (log_o - log_r)).sum(1).mean()


def _search(original, reference, generator, classes, cfg: TriggerConfig, device, blend: bool) -> tuple[Stamp, float]:
    """The best of cfg.restarts searches (a blend has one weight: one search), judged on one fresh batch."""
    found = [_search_from(original, reference, generator, classes, cfg, device, blend, start)
             for start in range(1 if blend else cfg.restarts)]
    if len(found) == 1:
        return found[0]
    with torch.no_grad():
        x = draw(generator, classes, 4 * cfg.batch_size, device)
        scores = [float(divergence(original, reference, stamp(x))) for stamp, _ in found]
    return found[max(range(len(found)), key=scores.__getitem__)]


def _search_from(original, reference, generator, classes, cfg: TriggerConfig, device, blend: bool,
                 start: int) -> tuple[Stamp, float]:
    channels, height, width = generator.input_shape
    pattern_logit = torch.zeros(1, channels, height, width, device=device, requires_grad=True)
    # the first start spreads the patch's area evenly (stamp_mask); a later one piles it at random
    # spots (seeded by seed_everything's caller)
    shape = (1, 1, 1, 1) if blend else (1, 1, height, width)
    init = torch.zeros(shape) if start == 0 else 3.0 * torch.randn(shape)
    mask_logit = init.to(device).requires_grad_(True)
    opt = torch.optim.Adam([pattern_logit, mask_logit], lr=cfg.lr)
    div = torch.zeros(())
    for _ in range(cfg.steps):
        with torch.no_grad():
            x = draw(generator, classes, cfg.batch_size, device)
        mask = stamp_mask(mask_logit, cfg, blend)
        stamped = (1.0 - mask) * x + mask * torch.sigmoid(pattern_logit)
        div = divergence(original, reference, stamped)
        opt.zero_grad(set_to_none=True)
        (-div).backward()
        opt.step()
    stamp = make_stamp(stamp_mask(mask_logit, cfg, blend).detach(), torch.sigmoid(pattern_logit).detach())
    return stamp, float(div.detach())


def reverse_triggers(original: nn.Module, reference: nn.Module, generator: Generator, classes, cfg: TriggerConfig,
                     device, seed: int = 0) -> tuple[list[Stamp], dict]:
    """The stamps (a free patch, and a full-image blend when cfg.blend) on which the original
    departs most from the reference; models are frozen and left unchanged."""
    seed_everything(seed)
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    original, reference = original.to(device).eval(), reference.to(device).eval()
    generator = generator.to(device).eval()
    stamps, stats = [], {}
    with frozen(original, reference):
        with torch.no_grad():
            clean = divergence(original, reference, draw(generator, classes, cfg.batch_size, device))
        stats["trigger_clean_divergence"] = float(clean)
        for blend in ([False, True] if cfg.blend else [False]):
            stamp, div = _search(original, reference, generator, classes, cfg, device, blend)
            name = "blend" if blend else "patch"
            with torch.no_grad():
                stamp.target = departs_to(original, reference, stamp, draw(generator, classes, 256, device))
            stamps.append(stamp)
            stats[f"trigger_{name}_departs_to"] = stamp.target
            stats[f"trigger_{name}_divergence"] = div
            stats[f"trigger_{name}_mask_mean"] = float(stamp.mask.mean())
            if not blend:  # where the patch sits: its mask-weighted centre, rows and columns in [0, 1]
                m = stamp.mask[0, 0]
                rows, cols = torch.linspace(0, 1, m.shape[0]), torch.linspace(0, 1, m.shape[1])
                stats["trigger_patch_row"] = float((m.sum(1) * rows).sum() / m.sum().clamp(min=1e-12))
                stats["trigger_patch_col"] = float((m.sum(0) * cols).sum() / m.sum().clamp(min=1e-12))
    return stamps, stats
