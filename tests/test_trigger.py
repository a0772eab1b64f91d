"""Server-side trigger reverse-engineering (fedunlearn/unlearn/source_free/trigger.py and its searches) on digits: the
search is told neither the target class nor where the trigger sits, only the two models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import ArrayDataset, BackdoorConfig, poison, triggered_test
from fedunlearn.errors import ConfigError
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train
from fedunlearn.unlearn.source_free import GeneratorConfig, train_generator
from fedunlearn.unlearn.source_free.pipeline import RepairConfig
from fedunlearn.unlearn.source_free.consolidate import ConsolidateConfig, consolidate, model_teacher
from fedunlearn.unlearn.source_free.hold import flip_rate, hold_term
from fedunlearn.unlearn.source_free.difference import _search, _search_from, divergence, reverse_triggers
from fedunlearn.unlearn.source_free.generator import Generator, draw
from fedunlearn.unlearn.source_free.stamps import TriggerConfig, make_stamp
from fedunlearn.unlearn.source_free.targeted import only_what_the_client_taught, targeted_triggers
from fedunlearn.unlearn.source_free.trigger import find_triggers

CPU = torch.device("cpu")
RECIPE = TrainConfig(epochs=8, batch_size=32, lr=0.05, schedule="constant")


def fit(data: ArrayDataset, seed: int = 0):
    seed_everything(seed)
    model = build_model(ModelConfig("cnn", hidden=32), (1, 8, 8), 10)
    return train(model, data, RECIPE, CPU, seed=seed, progress=False)


@pytest.fixture(scope="module")
def planted(digits):
    torch.set_num_threads(1)
    backdoor = BackdoorConfig(fraction=0.5, target=3, size=2, position="top-left")
    x, y, _ = poison(digits.train.x[:300], digits.train.y[:300], backdoor, seed=0)
    rest = digits.train.subset(np.arange(300, len(digits.train)))
    return {"original": fit(ArrayDataset.concat(rest, ArrayDataset(x, y))), "reference": fit(rest),
            "backdoor": backdoor, "data": digits}


@pytest.mark.slow
def test_the_search_finds_a_planted_trigger_without_knowing_target_or_position(planted):
    original, reference, backdoor = planted["original"], planted["reference"], planted["backdoor"]
    test = planted["data"].test
    keep = test.y != backdoor.target
    real, _ = triggered_test(test.x, test.y, backdoor)
    with torch.no_grad():
        real_asr = float((original(real).argmax(1) == backdoor.target).float().mean())
    assert real_asr > 0.5  # the planted backdoor took
    generator, _ = train_generator(original, (1, 8, 8), 10, GeneratorConfig(), CPU, judge=reference)
    stamps, stats = reverse_triggers(original, reference, generator, range(10), TriggerConfig(weight=1.0), CPU)
    patch = stamps[0]
    with torch.no_grad():
        found = float((original(patch(test.x[keep])).argmax(1) == backdoor.target).float().mean())
        by_reference = float((reference(patch(test.x[keep])).argmax(1) == backdoor.target).float().mean())
    # the stamp sends real test images to the hidden target as the real trigger does, and only in the original
    assert found > 0.5 * real_asr and by_reference < 0.2
    assert stats["trigger_patch_row"] < 0.5 and stats["trigger_patch_col"] < 0.5  # top-left
    assert flip_rate(original, [patch], test.x[keep]) > flip_rate(reference, [patch], test.x[keep]) + 0.3


@pytest.mark.slow
def test_the_targeted_search_names_the_backdoor_target_from_the_original_alone(planted):
    """Neural Cleanse's outlier rule, data-free: on the backdoored model one stamp is kept and it
    sends real test images to the hidden target; on the model trained without the trigger none is."""
    original, reference, backdoor = planted["original"], planted["reference"], planted["backdoor"]
    test = planted["data"].test
    keep = test.y != backdoor.target
    cfg = TriggerConfig(weight=1.0, search="targeted", blend=False)
    generator, _ = train_generator(original, (1, 8, 8), 10, GeneratorConfig(), CPU)
    stamps, stats = targeted_triggers(original, generator, range(10), cfg, CPU)
    assert stats["trigger_patch_target"] == backdoor.target
    assert {stamp.target for stamp in stamps} == {backdoor.target}  # what hold = "target" pushes away from
    with torch.no_grad():  # the largest held stamp works on real test images as the real trigger does
        found = float((original(stamps[-1](test.x[keep])).argmax(1) == backdoor.target).float().mean())
    assert found > 0.5
    # what only the departing client taught: the reference without its data does not follow the stamp;
    # a "reference" that holds the same backdoor (here the original itself) does, and nothing is kept
    kept, kept_stats = only_what_the_client_taught(original, reference, generator, range(10), stamps, dict(stats), CPU)
    assert kept == stamps and kept_stats["trigger_patch_kept"]
    assert kept_stats["trigger_patch_success_reference"] < 0.5 * kept_stats["trigger_patch_success_original"]
    dropped, dropped_stats = only_what_the_client_taught(original, original, generator, range(10), stamps, dict(stats),
                                                         CPU)
    assert dropped == [] and not dropped_stats["trigger_patch_kept"] and dropped_stats["trigger_stamps"] == 0
    clean_generator, _ = train_generator(reference, (1, 8, 8), 10, GeneratorConfig(), CPU)
    clean_stamps, clean_stats = targeted_triggers(reference, clean_generator, range(10), cfg, CPU)
    assert clean_stamps == [], clean_stats


@pytest.mark.slow
def test_both_searches_add_the_stamp_where_the_original_departs_from_the_start(planted):
    """search = "both": where the targeted stamps are dropped (here the reference holds the same
    backdoor, as a replay that kept it would), the difference stamp against a start without the
    backdoor still finds the trigger: it departs to the hidden target and sends real test images
    there in the backdoored model only.

    Over four seeds (generator and search), with eight starts of the non-convex search: one seed's
    stamp is a platform's luck, not the method (seed 0 sent 43% of real images to the target on one
    machine and 19% on another; with the default four starts seed 1 settled on a stamp departing to
    another class there). Measured with eight starts (2026-12-02): 0.19 / 0.74 / 0.95 / 0.72 of real
    images, the start without the backdoor at most 0.009."""
    original, clean, backdoor = planted["original"], planted["reference"], planted["backdoor"]
    test = planted["data"].test
    keep = test.y != backdoor.target
    real, _ = triggered_test(test.x, test.y, backdoor)
    with torch.no_grad():
        assert float((original(real).argmax(1) == backdoor.target).float().mean()) > 0.5  # the backdoor took
    cfg = TriggerConfig(weight=1.0, search="both", restarts=8)
    found = []
    for seed in range(4):
        generator, _ = train_generator(original, (1, 8, 8), 10, GeneratorConfig(), CPU, seed=seed)
        stamps, stats = find_triggers(original, original, generator, range(10), cfg, CPU, seed=seed, start=clean)
        assert not stats["trigger_patch_kept"] and stats["trigger_stamps"] == len(stamps) == 1
        with torch.no_grad():
            share = float((original(stamps[0](test.x[keep])).argmax(1) == backdoor.target).float().mean())
            by_start = float((clean(stamps[0](test.x[keep])).argmax(1) == backdoor.target).float().mean())
        found.append(stamps[0].target == stats["trigger_patch_departs_to_start"] == backdoor.target
                     and share > 0.15 and by_start < 0.2 * share)
    # a reverse-engineered 8%-area stamp, not the real trigger, that moves a share of real images to the
    # hidden target, and only in the model that holds the backdoor
    assert sum(found) >= 3, found


@pytest.mark.slow
def test_the_target_hold_takes_away_the_way_to_the_target(planted):
    """Distilling the backdoored original into itself on synthetic samples, with the targeted
    search's stamps held: hold = "target" (the stamps may not send inputs to their target) takes
    the real trigger's success down as the invariant hold does. Measured here: original 1.000
    success / 0.989 test accuracy, target hold 0.027 / 0.925, invariant 0.030 / 0.936: on this
    one planted trigger the two holds cost about the same accuracy (the tuning cells, where they
    do not, are in docs/findings.md, session 14)."""
    original, backdoor, test = planted["original"], planted["backdoor"], planted["data"].test
    real, _ = triggered_test(test.x, test.y, backdoor)
    generator, _ = train_generator(original, (1, 8, 8), 10, GeneratorConfig(), CPU)
    stamps, _ = targeted_triggers(original, generator, range(10), TriggerConfig(weight=1.0, search="targeted"), CPU)
    assert stamps
    teacher = model_teacher(original)

    def held(hold: str):
        term = hold_term(stamps, teacher, generator, range(10), 32, CPU, hold)
        student, _ = consolidate(original, teacher, generator, range(10), ConsolidateConfig(), CPU, forget_term=term)
        with torch.no_grad():
            return (float((student(real).argmax(1) == backdoor.target).float().mean()),
                    float((student(test.x).argmax(1) == test.y).float().mean()))

    with torch.no_grad():
        asr = float((original(real).argmax(1) == backdoor.target).float().mean())
        acc = float((original(test.x).argmax(1) == test.y).float().mean())
    target_asr, target_acc = held("target")
    invariant_asr, invariant_acc = held("invariant")
    print(f"original {asr:.3f} / {acc:.3f}; target {target_asr:.3f} / {target_acc:.3f}; "
          f"invariant {invariant_asr:.3f} / {invariant_acc:.3f}")
    assert asr > 0.5 and target_asr < 0.2 * asr and invariant_asr < 0.2 * asr
    assert target_acc > acc - 0.1 and invariant_acc > acc - 0.1  # the clean task survives either hold


def test_restarts_keep_the_stamp_the_two_models_part_on_most():
    """The difference search's first start is the single search (the same stamp, bit for bit); with
    more starts it keeps the one whose stamp parts the two models most on one fresh batch."""
    torch.set_num_threads(1)
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(build_model(ModelConfig("cnn", hidden=8), (1, 8, 8), 10).eval())
    original, other = models
    generator = Generator((1, 8, 8), 10, width=8).eval()
    classes = torch.arange(10)
    cfg = TriggerConfig(weight=1.0, steps=20, restarts=4)
    seed_everything(0)
    kept, _ = _search(original, other, generator, classes, cfg, CPU, blend=False)
    seed_everything(0)  # the same draws, each start on its own
    starts = [_search_from(original, other, generator, classes, cfg, CPU, False, start)[0] for start in range(4)]
    with torch.no_grad():
        x = draw(generator, classes, 4 * cfg.batch_size, CPU)
        scores = [float(divergence(original, other, stamp(x))) for stamp in starts]
    assert len(set(scores)) > 1  # the starts end at different stamps
    assert torch.equal(kept.mask, starts[scores.index(max(scores))].mask)
    seed_everything(0)
    single, _ = _search(original, other, generator, classes, replace(cfg, restarts=1), CPU, blend=False)
    assert torch.equal(single.mask, starts[0].mask)


def test_bad_trigger_settings_are_a_clear_error():
    with pytest.raises(ConfigError, match="trigger.mask_budget"):
        build(RepairConfig, {"trigger": {"mask_budget": 2.0}})
    with pytest.raises(ConfigError, match="trigger.steps"):
        build(RepairConfig, {"trigger": {"steps": -1}})
    with pytest.raises(ConfigError, match="trigger.search"):
        build(RepairConfig, {"trigger": {"search": "guess"}})
    with pytest.raises(ConfigError, match="trigger.hold"):
        build(RepairConfig, {"trigger": {"hold": "everything"}})
    with pytest.raises(ConfigError, match="trigger.restarts"):
        build(RepairConfig, {"trigger": {"restarts": 0}})
    with pytest.raises(ConfigError, match="trigger.class_batch_size"):
        build(RepairConfig, {"trigger": {"class_batch_size": 0}})
    with pytest.raises(ConfigError, match="trigger.hold_shift"):
        build(RepairConfig, {"trigger": {"hold_shift": 0.8}})


def test_a_stamp_moves_within_the_image_and_keeps_its_target():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3, 3] = 1.0
    stamp = make_stamp(mask, torch.full((1, 1, 8, 8), 0.5), target=4)
    moved = stamp.moved(1, -2)
    assert moved.target == 4 and moved.mask[0, 0, 4, 1] == 1.0 and moved.mask.sum() == 1.0
    assert stamp.moved(0, 6).mask.sum() == 0.0  # moved off the image: nothing stamped


def test_a_moved_hold_covers_a_trigger_the_stamp_missed_by_a_pixel(planted):
    """The hold is given the planted 2x2 trigger's stamp one pixel off (down and right: one of its
    four pixels on the trigger). Held in place it leaves the real trigger working; moved by up to
    two pixels each step (trigger.hold_shift = 0.25 on 8x8) it takes it out (300 distillation steps;
    measured here: 0.997 in place, 0.151 moved)."""
    original, backdoor, test = planted["original"], planted["backdoor"], planted["data"].test
    real, _ = triggered_test(test.x, test.y, backdoor)
    generator, _ = train_generator(original, (1, 8, 8), 10, GeneratorConfig(), CPU)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :2] = 1.0  # the planted trigger: a bright square in the top-left corner
    off = make_stamp(mask, torch.ones(1, 1, 8, 8), target=backdoor.target).moved(1, 1)
    teacher = model_teacher(original)

    def success(shift: float) -> float:
        seed_everything(0)
        term = hold_term([off], teacher, generator, range(10), 32, CPU, "target", shift)
        student, _ = consolidate(original, teacher, generator, range(10), ConsolidateConfig(steps=300), CPU,
                                 forget_term=term)
        with torch.no_grad():
            return float((student(real).argmax(1) == backdoor.target).float().mean())

    in_place, moved = success(0.0), success(0.25)
    print(f"real trigger's success: held in place {in_place:.3f}, moved {moved:.3f}")
    assert moved < 0.5 * in_place
