"""The tiny world's measures work: the classifier reads held-out drawings, a zero LoRA leaks exactly nothing, a LoRA
that paints every shape in the render style leaks far more, and a LoRA trained on the character raises likeness.

The world (base model + classifier) is built once, about 2 minutes on one CPU core, then cached in
~/.cache/atelier; `-m "not tiny_world"` leaves these tests out.
"""

import numpy as np
import pytest
import torch

import tiny_world as tw
from atelier.trainers.network import LoRANetwork, NetworkConfig


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
