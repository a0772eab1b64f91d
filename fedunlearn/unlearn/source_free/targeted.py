"""The targeted search: Neural Cleanse (Wang et al., IEEE S&P 2019) without data, on the original
alone, and the check that what it names is what only the departing client taught."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.training import frozen, seed_everything
from fedunlearn.unlearn.source_free.generator import Generator, draw
from fedunlearn.unlearn.source_free.stamps import Stamp, TriggerConfig, make_stamp, stamp_mask, stamp_success


def targeted_triggers(original: nn.Module, generator: Generator, classes, cfg: TriggerConfig, device,
                      seed: int = 0) -> tuple[list[Stamp], dict]:
    """Neural Cleanse (Wang et al., IEEE S&P 2019) without data. For every candidate target class t
    at once, the stamp of a fixed area that sends the most synthetic inputs of the other classes
    to t under the original; a backdoor's target needs far less area than any other class, so at
    a small enough area its success rate is an outlier. Neural Cleanse minimises the area per
    class; here the area climbs a ladder, mask_budget / 16, / 8, ... up to mask_budget, and the
    search stops at the first rung where the most anomalous class has success above half and an
    anomaly index, (s_t - median) / (1.4826 MAD) over the classes, above 2 (the paper's rule).
    One stamp per search kind (patch; blend when cfg.blend): holding stamps of classes that are
    merely easy to reach costs accuracy. (A single fixed area fails where the image is large: on
    28x28 images 8% of the pixels reach every class. Minimising a penalised area on synthetic
    samples found diffuse masks that did not carry over to real images: both measured.) Needs no
    reference, so it works where removing the client's steps wrecked the reference; on a model
    without a backdoor it should keep nothing."""
    seed_everything(seed)
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    original = original.to(device).eval()
    generator = generator.to(device).eval()
    stamps, stats = [], {}
    with frozen(original):
        for blend in ([False, True] if cfg.blend else [False]):
            name = "blend" if blend else "patch"
            for rung in range(LADDER, -1, -1):
                masks, patterns = _targeted_search(original, generator, classes, classes, _rung(cfg, rung), device, blend)
                success = _success(original, generator, classes, masks, patterns, 256, device)
                median = success.median()
                anomaly = (success - median) / (1.4826 * (success - median).abs().median().clamp(min=1e-3))
                i = int(anomaly.argmax())  # one departing client, one target: the most anomalous class only
                if success[i] > 0.5 and anomaly[i] > 2.0:
                    break
            else:
                continue
            # found at the smallest area where it stands out; on real images a stamp that small may not
            # work yet (measured), so the target's stamps of every larger rung are held too
            target = classes[i:i + 1]
            stamps.append(make_stamp(masks[i:i + 1], patterns[i:i + 1], int(target)))
            for larger in range(rung - 1, -1, -1):
                stamps.append(make_stamp(*_targeted_search(original, generator, classes, target, _rung(cfg, larger),
                                                       device, blend), int(target)))
            stats.update({f"trigger_{name}_target": int(target), f"trigger_{name}_success": float(success[i]),
                          f"trigger_{name}_anomaly": float(anomaly[i]), f"trigger_{name}_rung": rung})
    stats["trigger_stamps"] = len(stamps)
    return stamps, stats


LADDER = 4  # rungs below mask_budget, each half the area of the next


def _rung(cfg: TriggerConfig, rung: int) -> TriggerConfig:
    return replace(cfg, mask_budget=cfg.mask_budget / 2 ** rung, blend_max=cfg.blend_max / 2 ** rung)


def _targeted_search(original, generator, classes, targets, cfg: TriggerConfig, device, blend: bool):
    """(masks (K, 1, H, W) or (K, 1, 1, 1), patterns (K, C, H, W)) in [0, 1], one per class of `targets`,
    on synthetic inputs of `classes`."""
    k = len(targets)
    channels, height, width = generator.input_shape
    pattern_logit = torch.zeros(k, channels, height, width, device=device, requires_grad=True)
    mask_logit = torch.zeros((k, 1, 1, 1) if blend else (k, 1, height, width), device=device, requires_grad=True)
    opt = torch.optim.Adam([pattern_logit, mask_logit], lr=cfg.lr)
    target = targets.to(device).repeat_interleave(cfg.class_batch_size)
    for _ in range(cfg.steps):
        with torch.no_grad():
            x = draw(generator, classes, cfg.class_batch_size, device)
        mask = stamp_mask(mask_logit, cfg, blend).unsqueeze(1)  # (K, 1, 1, H, W)
        stamped = (1.0 - mask) * x.unsqueeze(0) + mask * torch.sigmoid(pattern_logit).unsqueeze(1)
        loss = F.cross_entropy(original(stamped.flatten(0, 1)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return stamp_mask(mask_logit, cfg, blend).detach(), torch.sigmoid(pattern_logit).detach()


@torch.no_grad()
def _success(original, generator, classes, masks, patterns, n: int, device) -> torch.Tensor:
    """Per class t: stamp_success of t's stamp, on one draw of fresh synthetic inputs."""
    x = draw(generator, classes, n, device)
    clean = original(x).argmax(1)
    return torch.tensor([stamp_success(original, Stamp(masks[i], patterns[i]), t, x, clean)
                         for i, t in enumerate(classes.tolist())])


def only_what_the_client_taught(original, reference, generator, classes, stamps: list[Stamp], stats: dict,
                                device) -> tuple[list[Stamp], dict]:
    """Keep the targeted search's stamps only if the reference (the client's steps removed) follows
    the strongest of them less than half as often as the original does. A backdoor is what only the
    departing client taught: its stamp turns the original and not the reference (tuning cells:
    0.89-1.00 against 0.00). A class that is simply easy to reach by a patch (a stroke that makes
    any digit an 8) turns both (withdrawal_noniid.toml's weak backdoor: class 8 named, 1.00 against
    1.00; holding it cost 2.8 points of test accuracy). A reference wrecked to one class is not
    turned by anything (inputs it already puts in the target are not counted), so it keeps them."""
    if "trigger_patch_target" not in stats:
        return stamps, stats
    target, count = stats["trigger_patch_target"], len(patch_stamps(stamps, stats))
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    with torch.no_grad():
        for name, model in (("original", original), ("reference", reference)):
            stats[f"trigger_patch_success_{name}"] = stamp_success(model.to(device).eval(), stamps[count - 1], target,
                                                                  draw(generator, classes, 256, device))
    stats["trigger_patch_kept"] = stats["trigger_patch_success_reference"] < 0.5 * stats["trigger_patch_success_original"]
    if not stats["trigger_patch_kept"]:  # the named class is not the client's: hold none of its stamps
        stamps = stamps[count:]
        stats["trigger_stamps"] = len(stamps)
    return stamps, stats


def patch_stamps(stamps: list[Stamp], stats: dict) -> list[Stamp]:
    """The targeted search's patch stamps: they come first, one per rung it searched (targeted_triggers)."""
    return stamps[:stats["trigger_patch_rung"] + 1]
