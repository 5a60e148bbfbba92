"""The leakage measures (core/leakage.py) on tiny synthetic images: zero for identical images, symmetric, spread vs
local changes told apart, aggregation per prompt and overall, clear errors on mismatched shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.core.leakage import (MEANINGS, MEASURES, changed_share, difference_heatmap, latent_rmse,
                                  pair_distances, pixel_mae, pixel_rmse, summarize)


def picture(seed=0, size=(16, 16)):
    return np.random.default_rng(seed).uniform(0.2, 0.8, (*size, 3))


def test_identical_images_and_latents_are_at_distance_zero():
    a = picture()
    pil = Image.fromarray((a * 255).astype(np.uint8))
    d = pair_distances(pil, pil.copy(), torch.ones(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    assert d == {"pixel_rmse": 0.0, "pixel_mae": 0.0, "changed": 0.0, "latent_rmse": 0.0}
    assert np.asarray(difference_heatmap(a, a)).max() == 0


def test_every_measure_is_symmetric_and_positive_for_different_images():
    a, b = picture(1), picture(2)
    for measure in (pixel_rmse, pixel_mae, changed_share):
        assert measure(a, b) == measure(b, a) > 0
    la, lb = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 4, 3, 3)
    assert latent_rmse(la, lb) == latent_rmse(lb, la) == pytest.approx(float(la.pow(2).mean().sqrt()))


def test_known_values_on_8bit_and_float_images():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255  # one pixel of 16 fully changed
    assert pixel_mae(a, b) == pytest.approx(1 / 16)
    assert pixel_rmse(a, b) == pytest.approx(np.sqrt(1 / 16))
    assert changed_share(a, b) == pytest.approx(1 / 16)
    assert pixel_rmse(a.astype(np.float32), b.astype(np.float32) / 255) == pytest.approx(np.sqrt(1 / 16))


def test_a_spread_shift_and_a_local_change_of_the_same_total_are_told_apart():
    """Same total absolute change: a global colour shift (what leakage looks like) changes every pixel a little,
    a local edit changes a quarter of them a lot. MAE cannot tell them apart; the changed share scores the spread
    shift higher; RMSE scores the local one higher (it weighs large differences more), which is why the report
    gives all three."""
    base = np.full((16, 16, 3), 0.1)
    spread = base + 0.15  # every pixel +0.15
    local = base.copy()
    local[:8, :8] += 0.6  # a quarter of the pixels +0.6: the same total
    assert np.abs(spread - base).sum() == pytest.approx(np.abs(local - base).sum())
    assert pixel_mae(base, spread) == pytest.approx(pixel_mae(base, local))
    assert changed_share(base, spread) == 1.0 > changed_share(base, local) == 0.25
    assert pixel_rmse(base, local) > pixel_rmse(base, spread)
    # and a stronger shift of the same kind scores higher on every measure
    stronger = base + 0.3
    for measure in (pixel_rmse, pixel_mae):
        assert measure(base, stronger) > measure(base, spread)


def test_summarize_means_per_prompt_then_over_prompts():
    pairs = [{"prompt": "a cube", "seed": s, "distances": {"pixel_rmse": r, "pixel_mae": r / 2, "changed": 0.5,
                                                            "latent_rmse": 2 * r}}
             for s, r in ((0, 0.1), (1, 0.3))]
    pairs.append({"prompt": "a dog", "seed": 0, "distances": {"pixel_rmse": 0.0, "pixel_mae": 0.0, "changed": 0.0,
                                                               "latent_rmse": 0.0}})
    out = summarize(pairs)
    cube, dog = out["per_prompt"]
    assert cube["prompt"] == "a cube" and cube["seeds"] == [0, 1] and len(cube["per_seed"]) == 2
    assert cube["mean"]["pixel_rmse"] == pytest.approx(0.2) and cube["mean"]["latent_rmse"] == pytest.approx(0.4)
    assert dog["mean"] == {"pixel_rmse": 0.0, "pixel_mae": 0.0, "changed": 0.0, "latent_rmse": 0.0}
    assert out["mean"]["pixel_rmse"] == pytest.approx(0.1)  # mean of per-prompt means, not of the three pairs
    assert set(out["mean"]) == set(MEASURES) == set(MEANINGS)
    with pytest.raises(ValueError, match="at least one compared pair"):
        summarize([])


def test_mismatched_shapes_are_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"same shape; got \(8, 8, 3\) \(base\) and \(8, 16, 3\) \(LoRA\)"):
        pixel_rmse(np.zeros((8, 8, 3)), np.zeros((8, 16, 3)))
    with pytest.raises(ValueError, match=r"latents .* same shape; got \(1, 4, 2, 2\) \(base\) and \(1, 4, 2, 3\)"):
        latent_rmse(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pixel_mae(np.full((2, 2, 3), np.nan), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        latent_rmse(torch.full((1, 4), float("nan")), torch.zeros(1, 4))


def test_heatmap_amplifies_small_differences():
    a = np.zeros((2, 2, 3))
    b = a.copy()
    b[0, 0, 1] = 0.1  # x4 = 0.4 -> red channel full, green partly
    heat = np.asarray(difference_heatmap(a, b))
    assert heat.shape == (2, 2, 3) and heat[0, 0, 0] == 255 and 0 < heat[0, 0, 1] < 255 and heat[1, 1].max() == 0
