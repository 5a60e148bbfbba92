"""One LoRA format: the training export, the file readers, the merge maths and forward-time LoRA agree on key names,
alpha defaults, ΔW and which layer shapes a module fits, because they all use core/lora_format.py."""

import pytest
import torch
from torch import nn

from atelier.core.forward_lora import ForwardLoRA, fit_layer
from atelier.core.lora_format import (ALPHA, DOWN, UP, LoraModule, base_prefix, delta_shape, fit_problem, join_modules,
                                      kohya_base, lora_delta, module_bases, shapes_fit, split_modules)
from atelier.core.lora_io import load_lora, lora_summary, save_lora
from atelier.core.lora_math import apply_to_weights
from atelier.trainers.network import LoRANetwork, NetworkConfig
from tests.tiny_models import TinyUNet


def random_network(seed: int = 0) -> LoRANetwork:
    net = LoRANetwork({"lora_unet": TinyUNet()}, NetworkConfig(rank=3, alpha=1.5, conv_rank=2, conv_alpha=2.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules_by_key.values():
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g))
    return net


def test_key_names():
    assert kohya_base("lora_unet", "input_blocks.1.1.proj_in") == "lora_unet_input_blocks_1_1_proj_in"
    assert kohya_base("lora_te", "") == "lora_te"
    assert base_prefix("lora_te1_text_model_q") == "lora_te1" and base_prefix("lora_unet_a") == "lora_unet"
    # ComfyUI's generic text-encoder names keep their dots (the only ones it maps for Qwen2.5-VL and umT5-XXL)
    assert kohya_base("text_encoders.qwen25_7b.transformer", "model.layers.0.mlp.up_proj") == \
        "text_encoders.qwen25_7b.transformer.model.layers.0.mlp.up_proj"
    assert base_prefix("text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q") == \
        "text_encoders.umt5xxl"
    sd = {"b" + DOWN: 0, "b" + UP: 0, "b" + ALPHA: 0, "a" + DOWN: 0, "c.hada_w1_a": 0}
    assert module_bases(sd) == ["a", "b"]


def test_training_export_reads_back_as_the_same_modules_and_the_same_delta(tmp_path):
    net = random_network()
    path = tmp_path / "net.safetensors"
    save_lora(path, net.kohya_state_dict(torch.float32), {})
    tensors, _ = load_lora(path)
    modules, others = split_modules(tensors)
    assert others == [] and sorted(modules) == sorted(net.modules_by_key) == module_bases(tensors)
    deltas = net.delta_weights()
    for key, m in modules.items():
        assert m.alpha == net.modules_by_key[key].alpha_value and m.scale == m.alpha / m.rank
        assert torch.equal(m.delta(), deltas[key]), key  # one ΔW formula: bit-identical, not merely close
    assert lora_summary(tensors, {})["modules"] == len(modules)


def test_a_missing_alpha_means_alpha_equals_rank_everywhere():
    net = random_network(1)
    sd = {k: v for k, v in net.kohya_state_dict(torch.float32).items() if not k.endswith(ALPHA)}
    modules, _ = split_modules(sd)
    assert all(m.alpha == m.rank for m in modules.values())
    again = random_network(2)
    again.load_kohya_state_dict(sd)
    assert all(m.alpha_value == m.rank for m in again.modules_by_key.values())
    key = next(iter(modules))
    down, up = sd[key + DOWN], sd[key + UP]
    assert torch.equal(lora_delta(down, up, None), modules[key].delta())
    fwd = ForwardLoRA()
    slot = fwd.add_slot("x")
    layer = again.modules_by_key[key].base
    fwd.add(slot, layer, down, up, None)
    assert fwd._layers[layer][0].scale == 1.0


# (delta shape, weight shape, fits): the one rule, linear vs 1x1 conv the only reshape
CASES = [((16, 8), (16, 8), True), ((16, 8), (16, 8, 1, 1), True), ((16, 8, 1, 1), (16, 8), True),
         ((16, 8, 3, 3), (16, 8, 3, 3), True), ((16, 8, 3, 3), (16, 72), False), ((16, 72), (16, 8, 3, 3), False),
         ((16, 8), (8, 16), False), ((16, 8, 3, 3), (16, 8, 1, 1), False)]


def factors(delta, rank=2):
    """down and up giving a ΔW of shape `delta` (conv down for a 4-D delta)."""
    g = torch.Generator().manual_seed(0)
    down = torch.randn(rank, *delta[1:], generator=g)
    up = torch.randn(delta[0], rank, *((1, 1) if len(delta) == 4 else ()), generator=g)
    return down, up


def layer_for(weight):
    if len(weight) == 2:
        return nn.Linear(weight[1], weight[0], bias=False)
    return nn.Conv2d(weight[1], weight[0], tuple(weight[2:]), bias=False)


@pytest.mark.parametrize("delta, weight, fits", CASES)
def test_every_user_of_the_fit_rule_agrees(delta, weight, fits):
    down, up = factors(delta)
    assert delta_shape(up.shape, down.shape) == delta and shapes_fit(delta, weight) is fits
    assert (fit_problem("m", up.shape, down.shape, "w", weight) is None) is fits
    module = LoraModule(down=down, up=up, alpha=2.0)
    outcomes = []
    for use in (lambda: lora_delta(down, up, 2.0, weight),
                lambda: apply_to_weights({"w": torch.zeros(weight)}, {"m": module}, {"w": "m"}),
                lambda: fit_layer(layer_for(weight), down, up)):
        try:
            use()
            outcomes.append(True)
        except ValueError as e:
            assert "another model" in str(e)
            outcomes.append(False)
    assert outcomes == [fits] * 3  # a kernel reshape (out, in, 3, 3) -> (out, 9·in) is refused by all three


def test_join_and_split_round_trip_keeps_fractional_alpha():
    down, up = factors((4, 3))
    modules = {"lora_unet_a": LoraModule(down=down, up=up, alpha=0.3)}
    joined = join_modules(modules)
    assert joined["lora_unet_a" + ALPHA].dtype == torch.float32 and joined["lora_unet_a" + UP].dtype == torch.float16
    assert split_modules(joined)[0]["lora_unet_a"].alpha == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"down is \(2, 3\) and up is \(4, 5\)"):
        LoraModule(down=down, up=torch.zeros(4, 5), alpha=1.0)
