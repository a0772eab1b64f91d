"""Name what only the departing client taught, on the server, and hold the student against it.

Distilling a repaired model from the global model on synthetic samples re-teaches a backdoor:
the teacher still maps the trigger to its target, and whatever of the trigger the samples carry
(or whatever the student shares with the teacher's weights) comes back. The server cannot see
the trigger; it searches for stamps (a patch of fixed area anywhere, or a full-image blend) that
act like one, on synthetic samples only:

- targeted.py: Neural Cleanse's per-class search on the original alone (the class a small stamp
  reaches far more easily than any other), kept only where the reference does not follow it;
- difference.py: the stamp on which the original departs most from another model (the reference,
  or the student's start).

find_triggers, here, runs the ones TriggerConfig.search names (stamps.py holds the settings and the
Stamp). The stamps are then held in distillation (hold.py's `hold_term`, a forget term for
`consolidate`): the classic "unlearn the reversed trigger" mitigation (Neural Cleanse section VI),
or, with hold = "target", only the way to the stamp's target is taken away.
"""

from __future__ import annotations

from torch import nn

from fedunlearn.unlearn.source_free.difference import reverse_triggers
from fedunlearn.unlearn.source_free.generator import Generator
from fedunlearn.unlearn.source_free.stamps import Stamp, TriggerConfig
from fedunlearn.unlearn.source_free.targeted import only_what_the_client_taught, targeted_triggers


def find_triggers(original: nn.Module, reference: nn.Module, generator: Generator, classes, cfg: TriggerConfig,
                  device, seed: int = 0, start: nn.Module | None = None) -> tuple[list[Stamp], dict]:
    """The stamps to hold (hold.py), by cfg.search. With "both", the difference stamp is searched
    against `start` (the student's start; the reference when none is given).

    Why "both": where the targeted search names no class (a weak outlier on synthetic samples), a
    start that has shed the backdoor is taught it again by distilling from the original; the
    stamp on which the original departs most from that start is what the distillation would
    carry back (docs/findings.md, session 13)."""
    if cfg.search == "difference":
        return reverse_triggers(original, reference, generator, classes, cfg, device, seed)
    stamps, stats = targeted_triggers(original, generator, classes, cfg, device, seed)
    stamps, stats = only_what_the_client_taught(original, reference, generator, classes, stamps, stats, device)
    if cfg.search == "both":
        more, found = reverse_triggers(original, reference if start is None else start, generator, classes, cfg,
                                       device, seed + 1)
        stamps = stamps + more
        stats.update({f"{k}_start": v for k, v in found.items()})  # beside the targeted search's own
        stats["trigger_stamps"] = len(stamps)
    return stamps, stats
