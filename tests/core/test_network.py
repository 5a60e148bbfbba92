"""LoRA / LoCon network on tiny real modules: no-op start, exact merge equivalence, install/remove, kohya keys."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from atelier.core.lora_format import lora_delta
from atelier.trainers.network import LoRAModule, LoRANetwork, NetworkConfig


class CastLinear(nn.Linear):
    """Like comfy.ops: a Linear subclass that overrides forward (casts its weight to the input's dtype)."""

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = CastLinear(8, 16)
        self.out = nn.Linear(16, 8)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.strided = nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2, padding=1)


def filled(module: nn.Module, seed: int) -> nn.Module:
    """Base weights from a local generator, so tests do not depend on torch's global RNG."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def unet():
    return filled(nn.ModuleDict({"blocks": nn.ModuleList([Block(), Block()])}), 1)


def text_encoder():
    layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
    return filled(nn.ModuleDict({"text_model": nn.ModuleDict({"layers": layers})}), 2)


def randomise_up(net: LoRANetwork, seed: int = 3) -> None:
    """What training does to a zero-initialised up: makes the adapter non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules_by_key.values():
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=gen) * 0.2)


def inputs(seed=4):
    gen = torch.Generator().manual_seed(seed)
    return {"linear": torch.randn(3, 5, 8, generator=gen), "conv": torch.randn(2, 4, 9, 9, generator=gen),
            "strided": torch.randn(2, 6, 9, 9, generator=gen)}


def outputs(block: Block, x) -> dict:
    return {"proj": block.proj(x["linear"]), "conv": block.conv(x["conv"]), "strided": block.strided(x["strided"])}


LOCON = NetworkConfig(rank=4, alpha=2.0, conv_rank=3, conv_alpha=1.5)


def test_untrained_network_is_a_noop_and_multiplier_zero_is_exact():
    model, x = unet(), inputs()
    before = outputs(model["blocks"][0], x)
    net = LoRANetwork({"lora_unet": model}, LOCON)
    with net.applied():
        for name, y in outputs(model["blocks"][0], x).items():
            assert torch.equal(y, before[name]), name
        randomise_up(net)
        assert not torch.allclose(model["blocks"][0].proj(x["linear"]), before["proj"])
        net.set_multiplier(0.0)
        for name, y in outputs(model["blocks"][0], x).items():
            assert torch.equal(y, before[name]), name


def test_output_equals_base_with_merged_delta_for_linear_and_locon():
    model, x = unet(), inputs()
    net = LoRANetwork({"lora_unet": model}, LOCON)
    randomise_up(net)
    net.set_multiplier(0.7)
    deltas = net.delta_weights()
    block = model["blocks"][0]
    with net.applied():
        got = outputs(block, x)
    w = lambda name: getattr(block, name).weight + 0.7 * deltas[f"lora_unet_blocks_0_{name}"]
    assert torch.allclose(got["proj"], F.linear(x["linear"], w("proj"), block.proj.bias), atol=1e-5)
    assert torch.allclose(got["conv"], F.conv2d(x["conv"], w("conv"), block.conv.bias, padding=1), atol=1e-5)
    expect = F.conv2d(x["strided"], w("strided"), block.strided.bias, stride=2, padding=2, dilation=2)
    assert got["strided"].shape == expect.shape == (2, 5, 5, 5)
    assert torch.allclose(got["strided"], expect, atol=1e-5)


def test_remove_restores_original_forwards_and_apply_is_idempotent():
    model, x = unet(), inputs()
    block = model["blocks"][0]
    original, before = block.proj.forward, outputs(block, x)
    net = LoRANetwork({"lora_unet": model}, LOCON)
    randomise_up(net)
    visited = []
    assert net.apply(visited.append) is net and not net.is_applied  # torch's Module.apply(fn) still works
    assert len(visited) == 1 + 1 + 3 * len(net.modules_by_key) and "forward" not in block.proj.__dict__
    net.apply()
    once = outputs(block, x)
    installed = block.proj.forward
    net.apply()
    assert block.proj.forward == installed and net.is_applied
    assert all(torch.equal(outputs(block, x)[k], once[k]) for k in once)  # not adapted twice
    net.remove()
    assert "forward" not in block.proj.__dict__ and block.proj.forward == original
    assert all(torch.equal(outputs(block, x)[k], before[k]) for k in before)
    net.remove()  # a second remove is harmless
    assert block.proj.forward == original


def test_remove_puts_back_an_instance_forward_and_context_manager_removes_on_error():
    layer = filled(nn.Linear(8, 8), 5)
    custom = lambda x: layer.__class__.forward(layer, x) * 2.0  # someone's instance-level forward
    layer.forward = custom
    net = LoRANetwork({"lora_te": layer}, NetworkConfig(rank=2))
    assert list(net.modules_by_key) == ["lora_te"]  # the root itself is the layer
    with pytest.raises(RuntimeError, match="boom"):
        with net.applied():
            assert layer.forward != custom
            raise RuntimeError("boom")
    assert layer.forward is custom and not net.is_applied


def test_include_exclude_and_rank_overrides_select_and_size_modules():
    config = NetworkConfig(rank=4, alpha=4.0, conv_rank=3,
                           target_patterns=(r"proj", r"conv", r"grouped", r"strided"),
                           exclude_patterns=(r"blocks\.1\.",),
                           rank_overrides=((r"strided", 0, 1.0), (r"conv$", 2, 0.5)))
    net = LoRANetwork({"lora_unet": unet()}, config)
    assert list(net.modules_by_key) == ["lora_unet_blocks_0_conv", "lora_unet_blocks_0_proj"]
    conv, proj = net.modules_by_key["lora_unet_blocks_0_conv"], net.modules_by_key["lora_unet_blocks_0_proj"]
    assert (conv.rank, conv.alpha_value, proj.rank, proj.alpha_value) == (2, 0.5, 4, 4.0)
    skipped = dict(net.skipped)
    assert "groups=2" in skipped["blocks.0.grouped"] and "rank 0" in skipped["blocks.0.strided"]
    assert "blocks.1.proj" not in skipped  # excluded layers are simply not targeted


def test_default_targets_every_linear_and_convs_only_with_conv_rank():
    linear_only = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4))
    assert sorted(linear_only.modules_by_key) == [f"lora_unet_blocks_{i}_{n}" for i in (0, 1) for n in ("out", "proj")]
    assert linear_only.skipped == []
    locon = LoRANetwork({"lora_unet": unet()}, LOCON)
    assert len(locon.modules_by_key) == 8 and [n for n, _ in locon.skipped] == ["blocks.0.grouped", "blocks.1.grouped"]
    # kohya keys also match patterns, so a pattern can pick a root
    roots = {"lora_unet": unet(), "lora_te": text_encoder()}
    te_only = LoRANetwork(roots, NetworkConfig(rank=2, target_patterns=("^lora_te",)))
    assert sorted(te_only.modules_by_key) == ["lora_te_text_model_layers_0", "lora_te_text_model_layers_1"]


def test_no_match_and_rank_too_large_errors_name_what_to_change():
    with pytest.raises(ValueError, match=r"No layer matched.*blocks\.0\.proj.*target_patterns=\['nothing'\]"):
        LoRANetwork({"lora_unet": unet()}, NetworkConfig(target_patterns=("nothing",)))
    with pytest.raises(ValueError, match=r"'blocks\.0\.proj' \(lora_unet\) is Linear\(8 -> 16\): rank 9 .* = 8"):
        LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=9, target_patterns=("proj",)))
    with pytest.raises(ValueError, match=r"'blocks\.0\.conv' .*Conv2d\(4, 6, kernel 3x3\): rank 7 .*exclude"):
        LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4, conv_rank=7, target_patterns=("conv",)))
    with pytest.raises(ValueError, match=r"Invalid regular expression '\('"):
        NetworkConfig(exclude_patterns=("(",))
    assert NetworkConfig(target_patterns="attn", exclude_patterns=["x"]).target_patterns == ("attn",)
    with pytest.raises(ValueError, match="rank_dropout must be in"):
        NetworkConfig(rank_dropout=1.0)


def test_init_is_deterministic_independent_of_root_order_and_leaves_global_rng_alone():
    u, t = unet(), text_encoder()
    state = torch.get_rng_state()
    a = LoRANetwork({"lora_unet": u, "lora_te": t}, LOCON, seed=7)
    b = LoRANetwork({"lora_te": t, "lora_unet": u}, LOCON, seed=7)
    c = LoRANetwork({"lora_unet": u, "lora_te": t}, LOCON, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(a.modules_by_key) == list(b.modules_by_key) == sorted(a.modules_by_key)
    for key, m in a.modules_by_key.items():
        assert torch.equal(m.down.weight, b.modules_by_key[key].down.weight), key
        assert not torch.equal(m.down.weight, c.modules_by_key[key].down.weight), key
        assert torch.count_nonzero(m.up.weight) == 0
    fan_in = 4 * 3 * 3
    assert a.modules_by_key["lora_unet_blocks_0_conv"].down.weight.abs().max() <= fan_in ** -0.5  # kaiming a=sqrt(5)


def _pair(config, seed=0):
    """Two identical networks (same seed, same up weights) over two identical models."""
    nets = [LoRANetwork({"lora_unet": unet()}, config, seed=seed) for _ in range(2)]
    for net in nets:
        randomise_up(net)
    return nets


def test_dropouts_act_only_in_train_mode():
    x = inputs()["linear"]
    plain = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4))
    dropped = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4, dropout=0.5, rank_dropout=0.5,
                                                               module_dropout=0.3))
    randomise_up(plain), randomise_up(dropped)
    reference = plain.modules_by_key["lora_unet_blocks_0_proj"]
    module = dropped.modules_by_key["lora_unet_blocks_0_proj"]
    dropped.eval()
    with torch.no_grad():
        assert torch.equal(module(x), reference(x)) and torch.equal(module(x), module(x))
        dropped.train()
        base = module.base(x)
        seen = [module(x) for _ in range(12)]
    assert any(torch.equal(y, base) for y in seen)  # module dropout skipped the adapter at least once
    changed = [y for y in seen if not torch.equal(y, base)]
    assert changed and all(not torch.allclose(y, reference(x)) for y in changed)  # masks applied
    assert len({tuple(y.flatten().tolist()) for y in changed}) == len(changed)  # new masks each step


def test_neuron_dropout_zeroes_that_share_of_the_rank_activations_and_rescales():
    """kohya's network_dropout: each element of down(x) is dropped with probability p, the rest scaled by 1/(1−p)."""
    net = LoRANetwork({"lora_unet": nn.Sequential(nn.Linear(8, 8))}, NetworkConfig(rank=8, alpha=8.0, dropout=0.25))
    module = net.modules_by_key["lora_unet_0"]
    with torch.no_grad():
        module.down.weight.copy_(torch.eye(8))  # down and up are identities at scale 1: the output is the mask
        module.up.weight.copy_(torch.eye(8))
        x = torch.ones(4, 16, 8)
        added = module(x) - module.base(x)  # (B, tokens, r): 0 where dropped, 1 / (1 - 0.25) elsewhere
    kept = torch.isclose(added, torch.tensor(1 / 0.75))
    assert bool((kept | (added.abs() < 1e-6)).all()), "every element is either dropped or rescaled by 1/(1-p)"
    share = 1 - kept.float().mean().item()
    assert 0.18 <= share <= 0.32, f"{share:.0%} of the rank activations were dropped; expected about 25 %"
    net.eval()
    with torch.no_grad():
        assert torch.allclose(module(x) - module.base(x), torch.ones(4, 16, 8))  # no dropout outside training


def test_rank_dropout_drops_whole_rank_channels_per_sample_and_rescales():
    net = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4, alpha=2.0, rank_dropout=0.5))
    randomise_up(net)
    module = net.modules_by_key["lora_unet_blocks_0_proj"]
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(8))  # (B, tokens, in)
    with torch.no_grad():
        added = module(x) - module.base(x)  # (B, tokens, out)
        lx = module.down(x)  # (B, tokens, r)
        masks = [torch.tensor([(i >> j) & 1 for j in range(4)], dtype=torch.float32) for i in range(16)]
        chosen = []
        for b in range(6):
            # one 0/1 mask over the rank channels, the same for every token of the sample, scaled by 1 / (1 - p)
            fits = [i for i, m in enumerate(masks)
                    if torch.allclose(module.up(lx[b] * m) * (2.0 / 4) / 0.5, added[b], atol=1e-5)]
            assert fits, f"sample {b}: the adapter output is not a per-sample rank mask"
            chosen.append(fits[0])
    assert len(set(chosen)) > 1  # drawn per sample, not once per batch


def test_dropout_masks_are_reproducible_and_replayed_under_gradient_checkpointing():
    config = NetworkConfig(rank=4, dropout=0.4, rank_dropout=0.3, module_dropout=0.2)
    x = inputs()["linear"]
    grads = []
    for use_checkpoint, net in zip((False, True), _pair(config)):
        net.train()
        layer = net.modules_by_key["lora_unet_blocks_0_proj"]
        with net.applied():
            for _ in range(4):  # several steps, so module dropout both skips and keeps
                y = checkpoint(layer.base, x, use_reentrant=False) if use_checkpoint else layer.base(x)
                (y ** 2).sum().backward()
        grads.append([layer.down.weight.grad.clone(), layer.up.weight.grad.clone()])
    assert torch.count_nonzero(grads[0][1]) > 0
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_lora_params_run_in_float32_and_output_keeps_the_activation_dtype():
    layer = filled(nn.Linear(8, 16), 6).to(torch.bfloat16)
    net = LoRANetwork({"lora_unet": layer}, NetworkConfig(rank=4, alpha=4.0))
    randomise_up(net)
    x = inputs()["linear"].to(torch.bfloat16)
    with net.applied():
        y = layer(x)
    assert y.dtype == torch.bfloat16 and net.modules_by_key["lora_unet"].down.weight.dtype == torch.float32
    merged = F.linear(x.float(), layer.weight.float() + net.delta_weights()["lora_unet"], layer.bias.float())
    assert torch.allclose(y.float(), merged, atol=0.05)


def test_multihead_attention_out_proj_is_skipped():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "proj": nn.Linear(8, 8)})
    net = LoRANetwork({"lora_te": model}, NetworkConfig(rank=2))
    assert list(net.modules_by_key) == ["lora_te_proj"]
    assert net.skipped[0][0] == "attn.out_proj" and "MultiheadAttention" in net.skipped[0][1]


def test_kohya_state_dict_keys_shapes_and_alpha():
    net = LoRANetwork({"lora_unet": unet(), "lora_te1": text_encoder()}, LOCON)
    sd = net.kohya_state_dict()
    assert len(sd) == 3 * (8 + 2)
    assert sd["lora_unet_blocks_0_proj.lora_down.weight"].shape == (4, 8)
    assert sd["lora_unet_blocks_0_proj.lora_up.weight"].shape == (16, 4)
    assert sd["lora_unet_blocks_1_conv.lora_down.weight"].shape == (3, 4, 3, 3)
    assert sd["lora_unet_blocks_1_conv.lora_up.weight"].shape == (6, 3, 1, 1)
    assert sd["lora_te1_text_model_layers_0.lora_down.weight"].shape == (4, 8)
    alpha = sd["lora_unet_blocks_0_proj.alpha"]
    assert alpha.shape == () and alpha.dtype == torch.float16 and float(alpha) == 2.0
    assert float(sd["lora_unet_blocks_0_conv.alpha"]) == 1.5
    assert all(t.dtype == torch.float16 and t.is_contiguous() and t.device.type == "cpu" for t in sd.values())
    sd["lora_unet_blocks_0_proj.lora_down.weight"].zero_()  # a copy: the network is untouched
    assert torch.count_nonzero(net.modules_by_key["lora_unet_blocks_0_proj"].down.weight) > 0


def test_load_kohya_state_dict_round_trip_gives_the_same_output():
    x, source_model, target_model = inputs(), unet(), unet()  # unet() is deterministic: same base weights
    source = LoRANetwork({"lora_unet": source_model}, LOCON, seed=1)
    randomise_up(source)
    target = LoRANetwork({"lora_unet": target_model}, LOCON, seed=2)
    target.load_kohya_state_dict(source.kohya_state_dict(torch.float32))
    with source.applied():
        expected = outputs(source_model["blocks"][1], x)
    with target.applied():
        got = outputs(target_model["blocks"][1], x)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_load_refuses_another_architecture_or_rank_and_changes_nothing():
    net = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    other = LoRANetwork({"lora_te": text_encoder()}, NetworkConfig(rank=4)).kohya_state_dict()
    with pytest.raises(ValueError) as e:
        net.load_kohya_state_dict(other)
    message = str(e.value)
    assert "8 missing, 6 unexpected" in message
    assert "lora_unet_blocks_0_out.lora_down.weight (4, 16)" in message
    assert "lora_te_text_model_layers_0.lora_down.weight (4, 8)" in message and "another model" in message
    wrong_rank = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=2)).kohya_state_dict()
    with pytest.raises(ValueError, match=r"8 with another shape(.|\n)*file has rank \[2\] and this network \[4\]"):
        net.load_kohya_state_dict(wrong_rank)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_alpha_means_alpha_equals_rank():
    net = LoRANetwork({"lora_unet": unet()}, NetworkConfig(rank=4, alpha=1.0))
    sd = {k: v for k, v in net.kohya_state_dict(torch.float32).items() if not k.endswith(".alpha")}
    net.load_kohya_state_dict(sd)
    assert {m.alpha_value for m in net.modules_by_key.values()} == {4.0}


def test_parameters_for_splits_unet_and_text_encoders():
    net = LoRANetwork({"lora_unet": unet(), "lora_te1": text_encoder(), "lora_te2": text_encoder()},
                      NetworkConfig(rank=2))
    unet_params, te_params = net.parameters_for("lora_unet"), net.parameters_for("lora_te")
    assert len(unet_params) == 2 * 4 and len(te_params) == 2 * 4 and len(net.parameters_for("lora_te2")) == 4
    assert {id(p) for p in unet_params} | {id(p) for p in te_params} == {id(p) for p in net.parameters()}
    assert not {id(p) for p in unet_params} & {id(p) for p in te_params}
    assert set(net.state_dict()) == {f"lora.{k}.{t}" for k in net.modules_by_key for t in ("down.weight",
                                                                                           "up.weight", "alpha")}


def test_lora_delta_matches_delta_weights_and_defaults_alpha_to_rank():
    net = LoRANetwork({"lora_unet": unet()}, LOCON)
    randomise_up(net)
    sd, deltas = net.kohya_state_dict(torch.float32), net.delta_weights()
    for key in ("lora_unet_blocks_0_proj", "lora_unet_blocks_0_conv", "lora_unet_blocks_1_strided"):
        base_shape = net.modules_by_key[key].base.weight.shape
        got = lora_delta(sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"], sd[key + ".alpha"], base_shape)
        assert got.shape == base_shape and torch.allclose(got, deltas[key], atol=1e-6), key
        rank = sd[key + ".lora_down.weight"].shape[0]
        unscaled = lora_delta(sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"], None, base_shape)
        assert torch.allclose(unscaled * float(sd[key + ".alpha"]) / rank, got, atol=1e-6)
    with pytest.raises(ValueError, match="another model"):
        lora_delta(sd["lora_unet_blocks_0_proj.lora_down.weight"], sd["lora_unet_blocks_0_proj.lora_up.weight"], 1.0,
                   torch.Size([16, 9]))


def test_lora_module_refuses_other_layers():
    with pytest.raises(TypeError, match="LayerNorm"):
        LoRAModule("lora_unet_norm", nn.LayerNorm(8), 2, 1.0)


def test_pointwise_convs_get_the_main_rank_like_kohya_plain_lora():
    root = nn.ModuleDict({"proj_in": nn.Conv2d(8, 8, 1), "conv": nn.Conv2d(8, 8, 3, padding=1), "fc": nn.Linear(8, 8)})
    plain = LoRANetwork({"lora_unet": root}, NetworkConfig(rank=4, alpha=2.0))
    assert sorted(plain.modules_by_key) == ["lora_unet_fc", "lora_unet_proj_in"]
    assert plain.modules_by_key["lora_unet_proj_in"].rank == 4
    locon = LoRANetwork({"lora_unet": root}, NetworkConfig(rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0))
    assert locon.modules_by_key["lora_unet_conv"].rank == 2 and locon.modules_by_key["lora_unet_proj_in"].rank == 4


def test_parse_rank_overrides():
    from atelier.trainers.network import parse_rank_overrides

    assert parse_rank_overrides("input_blocks_[12] = 8/4\n# comment\n\nattn2=16\ntime_embed = 0") == (
        ("input_blocks_[12]", 8, 4.0), ("attn2", 16, 16.0), ("time_embed", 0, 0.0))
    for bad in ("no equals sign", "= 8", "x = eight", "x = -1"):
        with pytest.raises(ValueError, match="regex = rank"):
            parse_rank_overrides(bad)


def test_t5_is_a_default_text_encoder_target_of_sd3_flux_and_chroma_only():
    from atelier.trainers.network import T5_INCLUDE, TE_INCLUDE, family_default_targets

    t5 = nn.ModuleDict({"encoder": nn.ModuleDict({"block": nn.ModuleList([nn.ModuleDict({"layer": nn.ModuleList([
        nn.ModuleDict({"SelfAttention": nn.ModuleDict({"q": nn.Linear(4, 4), "o": nn.Linear(4, 4)})}),
        nn.ModuleDict({"DenseReluDense": nn.ModuleDict({"wi_0": nn.Linear(4, 8), "wo": nn.Linear(8, 4)})})])})])})})
    flux = family_default_targets(NetworkConfig(rank=2, alpha=2.0), "Flux", "Flux")
    sd3 = family_default_targets(NetworkConfig(rank=2, alpha=2.0), "", "SD3")
    sdxl = family_default_targets(NetworkConfig(rank=2, alpha=2.0), "", "SDXL")
    chroma = family_default_targets(NetworkConfig(rank=2, alpha=2.0), "Chroma", None)  # no core.lora_meta name
    assert T5_INCLUDE in flux.target_patterns and T5_INCLUDE in sd3.target_patterns
    assert chroma.target_patterns == (r"^(double_blocks|single_blocks)\.", TE_INCLUDE, T5_INCLUDE)
    assert sorted(LoRANetwork({"lora_te1": t5}, chroma).modules_by_key)[0] == (
        "lora_te1_encoder_block_0_layer_0_SelfAttention_o")  # Chroma's lone T5 as ComfyUI maps it
    assert T5_INCLUDE not in sdxl.target_patterns and TE_INCLUDE in sdxl.target_patterns
    keys = sorted(LoRANetwork({"lora_te3": t5}, flux).modules_by_key)
    assert keys == ["lora_te3_encoder_block_0_layer_0_SelfAttention_o",
                    "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
                    "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0",
                    "lora_te3_encoder_block_0_layer_1_DenseReluDense_wo"]
    with pytest.raises(ValueError, match="No layer matched for LoRA in roots \\['lora_te3'\\]"):
        LoRANetwork({"lora_te3": t5}, sdxl)  # CLIP patterns leave a T5 alone


def test_qwen_and_wan_text_encoders_train_under_comfyui_generic_keys_and_round_trip():
    from atelier.core.lora_format import split_modules
    from atelier.trainers.network import QWEN_TE_INCLUDE, T5_INCLUDE, family_default_targets

    layer = nn.ModuleDict({"self_attn": nn.ModuleDict({"q_proj": nn.Linear(4, 8), "o_proj": nn.Linear(8, 4)}),
                           "mlp": nn.ModuleDict({"up_proj": nn.Linear(4, 6)})})
    qwen = nn.ModuleDict({"model": nn.ModuleDict({"layers": nn.ModuleList([layer])}),
                          "visual": nn.ModuleDict({"blocks": nn.ModuleList([nn.ModuleDict({"mlp": nn.ModuleDict(
                              {"fc": nn.Linear(4, 4)})})])})})  # the vision tower: text prompts never run it
    config = family_default_targets(NetworkConfig(rank=2, alpha=1.0), "QwenImage", "Qwen-Image")
    assert QWEN_TE_INCLUDE in config.target_patterns and T5_INCLUDE not in config.target_patterns
    assert T5_INCLUDE in family_default_targets(NetworkConfig(), "WAN21", "Wan 2.1").target_patterns
    net = LoRANetwork({"text_encoders.qwen25_7b.transformer": qwen}, config)
    assert sorted(net.modules_by_key) == ["text_encoders.qwen25_7b.transformer.model.layers.0.mlp.up_proj",
                  "text_encoders.qwen25_7b.transformer.model.layers.0.self_attn.o_proj",
                  "text_encoders.qwen25_7b.transformer.model.layers.0.self_attn.q_proj"]
    groups = net.param_groups(1e-3, 5e-4, True)  # the encoder's adapters get te_lr, none counts as the UNet's
    assert [(g["name"], len(g["params"])) for g in groups] == [("unet", 0), ("te", 2 * 3)]
    with torch.no_grad():
        for m in net.modules_by_key.values():
            m.up.weight.fill_(0.5)
    sd = net.kohya_state_dict(torch.float32)
    modules, others = split_modules(sd)
    assert others == [] and set(modules) == set(net.modules_by_key)
    again = LoRANetwork({"text_encoders.qwen25_7b.transformer": qwen}, config)
    again.load_kohya_state_dict(sd)  # resume reads the dotted keys back
    assert all(torch.equal(again.modules_by_key[k].up.weight, m.up.weight) for k, m in net.modules_by_key.items())
