"""Planning arithmetic: kohya samples/steps (with reg pairing), kimg <-> epochs, bucket histograms, plan text."""

import copy
import math

import pytest

from atelier.core.stats import (SubsetCount, bucket_histogram, epochs_to_kimg, format_plan, kimg_to_epochs,
                                plan_training)


def guide_recipe():
    """The guide's recipe: originals 38 x10, 384-px copies 38 x2, regularisation 38 x1."""
    return [SubsetCount("originals", "train", 38, 10), SubsetCount("384px copies", "train", 38, 2),
            SubsetCount("regularisation", "regularization", 38, 1)]


def test_plan_guide_recipe():
    subsets = guide_recipe()
    before = copy.deepcopy(subsets)
    plan = plan_training(subsets, batch_size=2, epochs=10)
    train = 38 * 10 + 38 * 2
    reg = train  # 38 reg samples are fewer than the train samples, so kohya repeats them to pair one to one
    assert plan.reg_samples_per_epoch == reg
    assert plan.samples_per_epoch == train + reg
    assert plan.steps_per_epoch == math.ceil((train + reg) / 2)
    assert plan.total_steps == 456 * 10
    assert [(d["name"], d["role"], d["images"], d["repeats"], d["samples"]) for d in plan.per_subset] == [
        ("originals", "train", 38, 10, 380), ("384px copies", "train", 38, 2, 76),
        ("regularisation", "regularization", 38, 1, 38)]
    assert subsets == before


def test_plan_caps_reg_samples_at_train_samples():
    subsets = [SubsetCount("me", "train", 10, 2), SubsetCount("class", "regularization", 200, 1)]
    plan = plan_training(subsets, batch_size=4, epochs=3)
    assert plan.reg_samples_per_epoch == 10 * 2
    assert plan.samples_per_epoch == 10 * 2 * 2
    assert plan.steps_per_epoch == math.ceil(40 / 4)


def test_plan_without_reg_and_with_mirrored_copies():
    plan = plan_training([SubsetCount("a", "train", 5, 3, mirrored_copies=True), SubsetCount("b", "train", 7, 1)],
                         batch_size=4, epochs=2)
    assert plan.reg_samples_per_epoch == 0
    assert plan.samples_per_epoch == 5 * 3 * 2 + 7
    assert plan.steps_per_epoch == math.ceil(37 / 4)
    assert plan.total_steps == 2 * plan.steps_per_epoch


def test_plan_divides_by_grad_accum():
    subsets = [SubsetCount("a", "train", 25, 1)]
    plain = plan_training(subsets, batch_size=2, epochs=4)
    accum = plan_training(subsets, batch_size=2, epochs=4, grad_accum=3)
    assert plain.steps_per_epoch == math.ceil(25 / 2)
    assert accum.steps_per_epoch == math.ceil(25 / (2 * 3))
    assert accum.total_steps == 4 * accum.steps_per_epoch
    assert accum.samples_per_epoch == plain.samples_per_epoch  # accumulation changes steps, not samples


@pytest.mark.parametrize("subsets, kwargs, words", [
    (guide_recipe(), {"batch_size": 0}, "batch_size"),
    (guide_recipe(), {"epochs": 0}, "epochs"),
    (guide_recipe(), {"grad_accum": 0}, "grad_accum"),
    ([SubsetCount("reg", "regularization", 10, 1)], {}, "no training images"),
    ([SubsetCount("empty", "train", 0, 10)], {}, "no training images"),
    ([], {}, "no training images"),
    ([SubsetCount("a", "validation", 10, 1)], {}, "role"),
    ([SubsetCount("a", "train", -1, 1)], {}, ">= 0"),
])
def test_plan_bad_inputs(subsets, kwargs, words):
    with pytest.raises(ValueError, match=words):
        plan_training(subsets, **kwargs)


def test_kimg_and_epochs():
    assert kimg_to_epochs(5000, 14000, mirrored=True) == pytest.approx(178.57, abs=0.01)
    assert kimg_to_epochs(5000, 14000) == pytest.approx(2 * kimg_to_epochs(5000, 14000, mirrored=True))
    for mirrored in (False, True):
        epochs = kimg_to_epochs(1234.5, 321, mirrored)
        assert epochs_to_kimg(epochs, 321, mirrored) == pytest.approx(1234.5)
    with pytest.raises(ValueError, match="at least 1 image"):
        kimg_to_epochs(100, 0)


def test_bucket_histogram_orders_by_count_then_size():
    sizes = [(512, 512)] * 3 + [(448, 576)] * 3 + [(1024, 1024)] + [(576, 448)] * 5 + [(1024, 512)] * 3
    histogram = bucket_histogram(sizes)
    assert histogram == [("576x448", 5), ("448x576", 3), ("512x512", 3), ("1024x512", 3), ("1024x1024", 1)]
    assert sum(n for _, n in histogram) == len(sizes)
    assert bucket_histogram([]) == []


def test_format_plan_shows_the_numbers():
    plan = plan_training(guide_recipe(), batch_size=2, epochs=10)
    buckets = bucket_histogram([(512, 512)] * 30 + [(384, 384)] * 8)
    text = format_plan(plan, kimg=5000, buckets=buckets)
    # the numbers worked out by hand: (38 x 10 + 38 x 2) train + as many reg = 912 samples, 456 steps at batch 2
    for line in ("originals       train               38       10            380",
                 "384px copies    train               38        2             76",
                 "regularisation  regularization      38        1             38",
                 "samples per epoch: 912 (456 train + 456 regularization",
                 "steps per epoch: 456 at batch size 2", "total steps: 4,560 for 10 epochs",
                 "images seen: 9.1 kimg over the run",  # 912 x 10 / 1000
                 "a 5,000 kimg budget = 5,482.5 epochs of 912 samples",  # 5,000,000 / 912
                 "512x512  30   78.9%", "384x384   8   21.1%"):  # 30 / 38 and 8 / 38
        assert line in text, f"{line!r} not in the plan text:\n{text}"


def test_format_plan_without_extras_omits_them():
    plan = plan_training([SubsetCount("a", "train", 10, 1)], batch_size=1, epochs=3)
    text = format_plan(plan)
    assert "budget" not in text and "buckets" not in text and "regularization" not in text
    assert "steps per epoch: 10 at batch size 1" in text and "total steps: 30 for 3 epochs" in text
