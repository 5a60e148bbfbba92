"""Bad LoRA inputs on tiny real tensors: malformed factors, families, shape fit, strengths, block weights, and the
refusal to write a NaN (no file is left behind)."""

import os

import pytest
import torch
from safetensors.torch import save_file

from atelier.core.lora_io import (check_file_finite, check_lora_tensors, check_same_family, key_formats, lora_family,
                                 save_lora)
from atelier.core.lora_format import fit_problem
from atelier.core.lora_math import BLOCK_LAYOUTS, check_strength, parse_block_weights

BASE = "lora_unet_input_blocks_1_1_proj_in"


def good(rank=4, out=16, inp=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"{BASE}.lora_down.weight": torch.randn(rank, inp, generator=g),
            f"{BASE}.lora_up.weight": torch.randn(out, rank, generator=g),
            f"{BASE}.alpha": torch.tensor(float(rank))}


def with_(changes=None, drop=()):
    t = good()
    t.update({f"{BASE}{k}": v for k, v in (changes or {}).items()})
    for k in drop:
        del t[f"{BASE}{k}"]
    return t


# (id, tensors, what the message must say)
MALFORMED = [
    ("0-d down", with_({".lora_down.weight": torch.tensor(1.0)}), "is 0-d with shape ()"),
    ("1-d up", with_({".lora_up.weight": torch.ones(16)}), "is 1-d with shape (16,)"),
    ("vector alpha", with_({".alpha": torch.ones(3)}), "should be one number (the network alpha) but has shape (3,)"),
    ("missing up", with_(drop=[".lora_up.weight"]), "has no partner"),
    ("missing down", with_(drop=[".lora_down.weight"]), f"no partner '{BASE}.lora_down.weight'"),
    ("rank mismatch", with_({".lora_up.weight": torch.ones(16, 3)}), "is (16, 3) but"),
    ("rank 0", with_({".lora_down.weight": torch.ones(0, 8), ".lora_up.weight": torch.ones(16, 0)}), "rank (>= 1)"),
    ("integer factor", with_({".lora_down.weight": torch.ones(4, 8, dtype=torch.int32)}), "torch.int32"),
    ("nan factor", with_({".lora_up.weight": torch.full((16, 4), float("nan"))}), "holds 64 NaN/inf values"),
    ("inf alpha", with_({".alpha": torch.tensor(float("inf"))}), "holds 1 NaN/inf values"),
    ("bad tucker mid", with_({".lora_mid.weight": torch.ones(2, 4, 3, 3)}), "a Tucker core of rank 4"),
]


@pytest.mark.parametrize("tensors, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_tensors_are_refused_naming_the_file_and_key(tensors, message):
    with pytest.raises(ValueError, match="LoRA 'sub/bad.safetensors': '" + BASE) as e:
        check_lora_tensors(tensors, "sub/bad.safetensors")
    assert message in str(e.value)


def test_well_formed_layouts_pass():
    check_lora_tensors(good(), "ok.safetensors")
    conv = {"lora_unet_c.lora_down.weight": torch.ones(2, 4, 3, 3),
            "lora_unet_c.lora_up.weight": torch.ones(6, 2, 1, 1),
            "lora_unet_c.alpha": torch.tensor([1.0])}  # a (1,) alpha is still one number
    check_lora_tensors(conv, "conv.safetensors")
    peft = {"transformer.x.lora_A.weight": torch.ones(4, 8), "transformer.x.lora_B.weight": torch.ones(8, 4)}
    check_lora_tensors(peft, "peft.safetensors")
    loha = {"lora_unet_x.hada_w1_a": torch.ones(4, 2), "lora_unet_x.alpha": torch.tensor(2.0)}
    check_lora_tensors(loha, "loha.safetensors")  # LyCORIS keys are ComfyUI's to read; only alpha is checked
    with pytest.raises(ValueError, match="'transformer.x.lora_A.weight' .* has no partner 'transformer.x.lora_B"):
        check_lora_tensors({"transformer.x.lora_A.weight": torch.ones(4, 8)}, "half.safetensors")


def sd_lora(width, prefix="lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"):
    return {f"{prefix}.lora_down.weight": torch.ones(2, width), f"{prefix}.lora_up.weight": torch.ones(320, 2)}


def test_families_are_read_from_keys_and_widths():
    assert lora_family(sd_lora(768)) == "SD1.x"
    assert lora_family(sd_lora(1024)) == "SD2.x"
    assert lora_family(sd_lora(2048)) == "SDXL"  # a UNet-only SDXL LoRA has SD1-style key names
    assert lora_family(sd_lora(768, "lora_te_text_model_encoder_layers_0_self_attn_q_proj")) == "SD1.x"
    assert lora_family({"lora_te1_text_model_x.lora_down.weight": torch.ones(2, 768)}) == "SDXL"
    assert lora_family(sd_lora(64, "lora_unet_double_blocks_0_img_attn_proj")) == "Flux / DiT"
    assert lora_family({"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": torch.ones(2, 3)}) \
        == "Flux / DiT"
    assert lora_family(sd_lora(40)) == "SD-style (text width 40)"
    assert lora_family({"lora_unet_input_blocks_0_0.lora_down.weight": torch.ones(2, 4, 3, 3)}) == "SD-style"
    assert lora_family({"something.else": torch.ones(1)}) == "unknown"


def test_mixing_families_is_refused_naming_both_files():
    assert check_same_family([("a.safetensors", sd_lora(768)), ("b.safetensors", sd_lora(768))]) == "SD1.x"
    conv_only = {"lora_unet_input_blocks_0_0.lora_down.weight": torch.ones(2, 4, 3, 3)}
    assert check_same_family([("c.safetensors", conv_only), ("a.safetensors", sd_lora(768))]) == "SD1.x"
    sdxl = {"lora_te1_text_model_x.lora_down.weight": torch.ones(2, 768)}
    with pytest.raises(ValueError, match="'sd15.safetensors' is for SD1.x but 'xl.safetensors' is for SDXL"):
        check_same_family([("sd15.safetensors", sd_lora(768)), ("xl.safetensors", sdxl)])
    flux = sd_lora(64, "lora_transformer_single_transformer_blocks_0_attn_to_k")
    with pytest.raises(ValueError, match="is for SD1.x but 'flux.safetensors' is for Flux / DiT"):
        check_same_family([("sd15.safetensors", sd_lora(768)), ("flux.safetensors", flux)])
    with pytest.raises(ValueError, match="is for SD1.x but 'sd2.safetensors' is for SD2.x"):
        check_same_family([("sd15.safetensors", sd_lora(768)), ("sd2.safetensors", sd_lora(1024))])


def test_shape_fit_against_the_target_layer():
    assert fit_problem("b", (320, 4), (4, 768), "w", (320, 768)) is None
    assert fit_problem("b", (320, 4), (4, 320), "w", (320, 320, 1, 1)) is None  # linear LoRA on a 1x1 conv
    assert fit_problem("b", (320, 4, 1, 1), (4, 320, 1, 1), "w", (320, 320)) is None
    assert fit_problem("b", (320, 4, 1, 1), (4, 320, 3, 3), "w", (320, 320, 3, 3)) is None
    assert fit_problem("b", (320, 4, 1, 1), (4, 320, 1, 1), "w", (320, 320, 3, 3), mid_shape=(4, 4, 3, 3)) is None
    wrong_in = fit_problem("lora_unet_x", (320, 4), (4, 100), "diffusion_model.x.weight", (320, 768))
    assert wrong_in == ("'lora_unet_x' makes a (320, 100) change (up (320, 4), down (4, 100)) but the layer "
                        "'diffusion_model.x.weight' is (320, 768)")
    assert fit_problem("b", (640, 4), (4, 768), "w", (320, 768)) is not None
    assert fit_problem("b", (320, 4), (4, 2880), "w", (320, 320, 3, 3)) is not None  # no silent kernel reshape


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10.5, -1e308, "x", None])
def test_bad_strengths_are_refused_naming_the_slot(value):
    with pytest.raises(ValueError, match="strength_3 "):
        check_strength(value, "strength_3")


def test_good_strengths_pass():
    assert check_strength(-10) == -10.0 and check_strength(0.25) == 0.25 and check_strength("1") == 1.0


@pytest.mark.parametrize("bad, block", [("nan", "IN04"), ("inf", "IN04"), ("1e308", "IN04"), ("-11", "IN04")])
def test_bad_block_weights_are_refused_naming_the_block(bad, block):
    values = ["1"] * 17
    values[3] = bad  # the fourth block of the SD1 layout
    assert BLOCK_LAYOUTS[17][3] == block
    with pytest.raises(ValueError, match=f"block_weights_2: block {block} is "):
        parse_block_weights(",".join(values), "block_weights_2")
    assert parse_block_weights(",".join(["10"] * 12)) == [10.0] * 12


def test_save_lora_refuses_nan_and_fp16_overflow_and_writes_nothing(tmp_path):
    t = good()
    t[f"{BASE}.lora_up.weight"] = t[f"{BASE}.lora_up.weight"].clone()
    t[f"{BASE}.lora_up.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"Refusing to write LoRA 'x.safetensors': '{BASE}.lora_up.weight' holds 1"):
        save_lora(tmp_path / "x.safetensors", t, {})
    big = {k: (v * 1e5).half() if v.ndim else v for k, v in good().items()}  # 1e5 is past float16's 65504
    with pytest.raises(ValueError, match="Nothing was written"):
        save_lora(tmp_path / "x.safetensors", big, {})
    assert os.listdir(tmp_path) == []


def test_check_file_finite_names_the_key(tmp_path):
    save_file({"a": torch.ones(3), "b": torch.tensor([1.0, float("inf")])}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="'atelier/m.safetensors' would hold 1 NaN/inf values in 'b'"):
        check_file_finite(tmp_path / "c.safetensors", "atelier/m.safetensors")
    save_file({"a": torch.ones(3)}, str(tmp_path / "ok.safetensors"))
    check_file_finite(tmp_path / "ok.safetensors", "ok.safetensors")


def test_dit_loras_with_text_encoder_keys_are_not_sdxl():
    # SD3.5 (te1 / te2 / te3) and Flux.1 (te1 / te3) LoRAs with text-encoder keys keep their DiT family
    te = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 32),
          "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.ones(2, 32)}
    assert lora_family({**sd_lora(64, "lora_unet_double_blocks_0_img_attn_proj"), **te}) == "Flux / DiT"
    assert lora_family({**sd_lora(64, "lora_unet_joint_blocks_0_x_block_attn_qkv"), **te}) == "Flux / DiT"
    assert key_formats(te) == ["kohya"]  # lora_te3_ (T5-XXL) is kohya's layout, not 'other'
