"""The tiny world's measures work: the classifier reads held-out drawings, a zero LoRA leaks exactly nothing, a LoRA
that paints every shape in the render style leaks far more, a LoRA trained on the character raises likeness, and a
text slider "render − flat" at +1 raises P(render) while −1 lowers it.

The world (base model + classifier) is built once, about 2 minutes on one CPU core, then cached in
~/.cache/atelier; `-m "not tiny_world"` leaves these tests out.
"""

import numpy as np
import pytest
import torch

import tiny_world as tw
from atelier.trainers import objectives as ob
from atelier.trainers.network import LoRANetwork, NetworkConfig
from atelier.trainers.slider import SliderPrompts, prompt_samples


def test_drawings_are_deterministic_and_the_styles_differ():
    a = tw.draw("circle", "red", "flat", np.random.default_rng(0))
    assert torch.equal(a, tw.draw("circle", "red", "flat", np.random.default_rng(0)))
    b = tw.draw("circle", "red", "render", np.random.default_rng(0))
    assert a.shape == (3, tw.SIZE, tw.SIZE) and a.min() >= -1 and a.max() <= 1
    assert (a - b).abs().mean() > 0.3  # the render look changes most pixels (background, shading, outline)
    assert tw.caption("circle", "red", None) == "red circle"
    assert tw.caption("circle", "red", "flat") == "red circle, flat"
    with pytest.raises(ValueError, match="Unknown shape 'star'; expected one of circle, square"):
        tw.shape_mask("star", 8, 8, 5)
    assert tw.WorldConfig().key() != tw.WorldConfig(seed=1).key()  # another setting, another cache file


@pytest.fixture(scope="module")
def world():
    return tw.load_world()


@pytest.mark.tiny_world
def test_the_classifier_reads_held_out_drawings(world):
    data = tw.dataset(tw.SHAPES, tw.COLOURS, tw.STYLES, 2, seed=123)  # positions and sizes it never saw
    p = world.classifier.probabilities(torch.stack([d[0] for d in data]))
    for head, names, index in (("shape", tw.SHAPES, 0), ("colour", list(tw.COLOURS), 1), ("style", tw.STYLES, 2)):
        truth = torch.tensor([names.index(d[2][index]) for d in data])
        assert (p[head].argmax(1) == truth).float().mean() > 0.95, head


@pytest.mark.tiny_world
def test_a_leaky_lora_scores_worse_than_a_zero_lora_and_a_character_lora_raises_likeness(world):
    zero = LoRANetwork({"lora_unet": world.unet}, NetworkConfig(rank=4, alpha=4.0), seed=0)  # up = 0: ΔW = 0
    clean = tw.leakage(world, zero, seeds=(0,))
    assert all(v == 0.0 for v in clean.values()), clean  # same seeds, same noise, exactly the base renders
    # leaky: every known shape drawn in the render style but captioned "flat", so "flat" prompts turn "render"
    leaky_data = [(x, tw.caption(s, c, "flat")) for x, _, (s, c, _) in
                  tw.dataset(tw.KNOWN, tw.COLOURS, ("render",), 2, seed=7)]
    leaky = tw.train_lora(world, leaky_data, steps=120)
    leak = tw.leakage(world, leaky, seeds=(0,), styles=("flat",))
    assert leak["style"] > 0.3 and leak["pixel_rmse"] > 0.05, leak
    base_like = tw.likeness(world, None, seeds=(0,))
    character = tw.train_lora(world, tw.dataset((tw.CHARACTER,), tw.COLOURS, tw.STYLES, 3, seed=8), steps=120)
    like = tw.likeness(world, character, seeds=(0,))
    assert like["likeness"] > base_like["likeness"] + 0.15 and like["p_shape_render"] > 0.3, (base_like, like)


def style_sets(guidance: float = 4.0):
    """Text-slider prompt sets over circle, square, triangle × every colour: "<colour> <shape>" toward ", render"
    away from ", flat", enhance."""
    return [SliderPrompts(f"{c} {s}", f"{c} {s}, render", f"{c} {s}, flat", f"{c} {s}", "enhance", guidance, 64)
            for s in tw.KNOWN[:3] for c in tw.COLOURS]


@pytest.mark.tiny_world
def test_text_slider_plus_one_raises_p_render_and_minus_one_lowers_it(world):
    """The sign of TextSliderLoss on a model that has learned something (the random SD fixture cannot show it):
    positive "…, render", negative "…, flat", enhance; 3 steps (lr 0.01, 4-step partial denoise, guidance 4, as the
    host test trains). Measured on the neutral prompts "<colour> <shape>", sampler seeds 100 and 101: P(render)
    0.26 at 0 → 1.00 at +1 → 0.00 at −1; on "<shape>, render" prompts 1.00 → 0.59 at −1."""
    sets = style_sets()
    slider = tw.train_lora(world, prompt_samples(sets, 3, downscale=64 // tw.SIZE), steps=3, lr=0.01,
                           objective=ob.TextSliderLoss(sets, denoise_steps=4))

    def p_render(suffix, strength):
        captions = [f"{c} {s}{suffix}" for s in tw.KNOWN[:3] for c in tw.COLOURS]
        images = tw.render(world, captions, (100, 101), slider, strength)
        return world.classifier.probabilities(images)["style"][:, tw.STYLES.index("render")].mean().item()

    neutral = {m: p_render("", m) for m in (-1.0, 0.0, 1.0)}
    assert neutral[1.0] > neutral[0.0] + 0.5 and neutral[-1.0] < neutral[0.0] - 0.15, neutral
    assert p_render(", render", -1.0) < 0.8, "−1 did not pull 'render' prompts toward flat"
