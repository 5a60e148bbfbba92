"""Forward-time LoRA with per-sample strengths equals merging the LoRA into the weights, sample by sample."""

import copy

import pytest
import torch
from torch import nn

from atelier.core.forward_lora import ForwardLoRA
from atelier.trainers.network import LoRANetwork, NetworkConfig
from tests.tiny_models import TinyUNet


def random_lora(model: nn.Module, seed: int, conv_rank: int = 2) -> LoRANetwork:
    """A LoCon over the tiny UNet with random (non-zero) down and up weights."""
    net = LoRANetwork({"lora_unet": model}, NetworkConfig(rank=3, alpha=1.5, conv_rank=conv_rank, conv_alpha=2.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules_by_key.values():
            module.down.weight.copy_(torch.randn(module.down.weight.shape, generator=g) * 0.3)
            module.up.weight.copy_(torch.randn(module.up.weight.shape, generator=g) * 0.3)
    return net


def add_slot(fwd: ForwardLoRA, net: LoRANetwork, name: str) -> int:
    slot = fwd.add_slot(name)
    for key, m in net.modules_by_key.items():
        fwd.add(slot, m.base, m.down.weight, m.up.weight, m.alpha_value, where=key)
    return slot


def merged(model: nn.Module, nets_and_strengths) -> nn.Module:
    """A copy of model with strength * ΔW of each LoRA added to the weights (what a stock loader does)."""
    out = copy.deepcopy(model)
    names = {id(m): n for n, m in model.named_modules()}
    with torch.no_grad():
        for net, strength in nets_and_strengths:
            for key, delta in net.delta_weights().items():
                name = names[id(net.modules_by_key[key].base)]
                out.get_submodule(name).weight += strength * delta
    return out


def inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.full((batch,), 500.0),
            torch.randn(batch, 5, 8, generator=g))


def test_per_sample_strengths_match_merged_weights_sample_by_sample():
    model = TinyUNet().eval()
    net = random_lora(model, seed=1)
    fwd = ForwardLoRA()
    add_slot(fwd, net, "a")
    strengths = [0.0, 0.5, 1.0, -0.75]
    x, t, ctx = inputs(len(strengths))
    fwd.set_strengths([[s] for s in strengths])
    with torch.no_grad(), fwd.attached():
        batched = model(x, t, ctx)
    with torch.no_grad():
        base = model(x, t, ctx)
        for i, s in enumerate(strengths):
            reference = merged(model, [(net, s)])(x[i:i + 1], t[i:i + 1], ctx[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], reference, rtol=1e-4, atol=1e-5)
    assert (batched[1] - base[1]).abs().max() > 1e-3  # the LoRA really changes the output
    assert torch.equal(batched[0], base[0])  # strength 0 adds exactly nothing


def test_two_loras_add_and_each_sample_uses_only_its_own():
    model = TinyUNet().eval()
    a, b = random_lora(model, seed=2), random_lora(model, seed=3)
    fwd = ForwardLoRA()
    add_slot(fwd, a, "a")
    add_slot(fwd, b, "b")
    table = [[1.0, 0.0], [0.0, 0.8], [0.5, -0.5]]
    x, t, ctx = inputs(3, seed=4)
    fwd.set_strengths(table)
    with torch.no_grad(), fwd.attached():
        batched = model(x, t, ctx)
    with torch.no_grad():
        for i, (sa, sb) in enumerate(table):
            reference = merged(model, [(a, sa), (b, sb)])(x[i:i + 1], t[i:i + 1], ctx[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], reference, rtol=1e-4, atol=1e-5)
    assert fwd.layer_count(0) == fwd.layer_count(1) == fwd.layer_count() > 0


def test_cfg_chunks_repeat_the_per_sample_strengths():
    """[cond chunk | uncond chunk] of B samples each: row i and row B + i get sample i's strength."""
    model = TinyUNet().eval()
    net = random_lora(model, seed=5)
    fwd = ForwardLoRA()
    add_slot(fwd, net, "a")
    strengths = [0.0, 1.0, 0.3]
    x, t, ctx = inputs(3, seed=6)
    uncond = torch.zeros_like(ctx)
    fwd.set_strengths([[s] for s in strengths])
    with torch.no_grad(), fwd.attached():
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, uncond]))
    with torch.no_grad():
        for i, s in enumerate(strengths):
            ref = merged(model, [(net, s)])
            torch.testing.assert_close(both[i], ref(x[i:i + 1], t[:1], ctx[i:i + 1])[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(both[3 + i], ref(x[i:i + 1], t[:1], uncond[i:i + 1])[0], rtol=1e-4,
                                       atol=1e-5)


def test_one_row_of_strengths_applies_to_any_batch_and_hooks_come_off():
    model = TinyUNet().eval()
    net = random_lora(model, seed=7)
    fwd = ForwardLoRA()
    add_slot(fwd, net, "a")
    fwd.set_strengths([0.6])
    x, t, ctx = inputs(5, seed=8)
    with torch.no_grad():
        with fwd.attached():
            patched = model(x, t, ctx)
        after = model(x, t, ctx)
        torch.testing.assert_close(patched, merged(model, [(net, 0.6)])(x, t, ctx), rtol=1e-4, atol=1e-5)
        assert torch.equal(after, TinyUNet().eval()(x, t, ctx))  # nothing left behind, weights untouched


def test_hooks_come_off_when_the_block_raises():
    layer = nn.Linear(4, 3)
    fwd = ForwardLoRA()
    slot = fwd.add_slot("a")
    fwd.add(slot, layer, torch.ones(2, 4), torch.ones(3, 2), None)
    fwd.set_strengths([1.0])
    with pytest.raises(RuntimeError, match="boom"), fwd.attached():
        raise RuntimeError("boom")
    x = torch.randn(2, 4)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_conv_1x1_lora_saved_as_linear_and_linear_saved_as_1x1_conv():
    conv, lin = nn.Conv2d(4, 6, 1), nn.Linear(4, 6)
    down, up = torch.randn(2, 4), torch.randn(6, 2)
    fwd = ForwardLoRA()
    slot = fwd.add_slot("a")
    fwd.add(slot, conv, down, up, 1.0)
    fwd.add(slot, lin, down[:, :, None, None], up[:, :, None, None], 1.0)
    fwd.set_strengths([1.0])
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad(), fwd.attached():
        got_conv, got_lin = conv(x), lin(x.permute(0, 2, 3, 1))
    delta = (up @ down) * 0.5
    want_conv = nn.functional.conv2d(x, conv.weight + delta[:, :, None, None], conv.bias)
    want_lin = nn.functional.linear(x.permute(0, 2, 3, 1), lin.weight + delta, lin.bias)
    torch.testing.assert_close(got_conv, want_conv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_lin, want_lin, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused_with_a_clear_message():
    fwd = ForwardLoRA()
    layer = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="add_slot"):
        fwd.add(0, layer, torch.ones(2, 4), torch.ones(3, 2), None)
    slot = fwd.add_slot("a")
    with pytest.raises(ValueError, match="made for another model"):
        fwd.add(slot, layer, torch.ones(2, 5), torch.ones(3, 2), None, where="lora_unet_x")
    with pytest.raises(ValueError, match="Linear and Conv2d"):
        fwd.add(slot, nn.LayerNorm(4), torch.ones(2, 4), torch.ones(4, 2), None)
    with pytest.raises(ValueError, match=r"\(samples, 1\)"):
        fwd.set_strengths([[1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        fwd.set_strengths([float("nan")])
    fwd.add(slot, layer, torch.ones(2, 4), torch.ones(3, 2), None)
    fwd.set_strengths([[1.0], [0.0], [0.5]])
    with pytest.raises(RuntimeError, match="whole number of copies"), torch.no_grad(), fwd.attached():
        layer(torch.randn(4, 4))
