"""Bad inputs to the LoRA tools, grid and comparison nodes through POST /prompt, sent raw as a hostile or careless
API client would (NaN numbers, unlisted dropdown values, malformed and misfitting LoRA files): each prompt must fail
with a clear ValueError naming the problem (or be refused at validation), and no LoRA, checkpoint or grid file may
appear, hidden temporary files included."""

import json
import math

import pytest
import torch
from comfy_host import FIXTURE_CHECKPOINT_NAME, ComfyError
from safetensors.torch import save_file

NAN = float("nan")
SUB = "badinput"  # the bad files live in models/loras/badinput/
ATTN2_K = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"  # fixture weight (320, 768)
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # fixture weight (768, 768)


def factors(base, out, inp, rank=4, scale=0.01, alpha=None):
    g = torch.Generator().manual_seed(len(base) + out)
    return {f"{base}.lora_down.weight": torch.randn(rank, inp, generator=g) * scale,
            f"{base}.lora_up.weight": torch.randn(out, rank, generator=g) * scale,
            f"{base}.alpha": torch.tensor(float(rank if alpha is None else alpha))}


def good():
    return {**factors(ATTN2_K, 320, 768), **factors(TE_Q, 768, 768)}


def edited(base, **changes):
    t = good()
    for suffix, value in changes.items():
        key = f"{base}.{suffix.replace('__', '.')}"
        if value is None:
            del t[key]
        else:
            t[key] = value
    return t


FILES = {
    "good": good(),
    "huge": {k: (v * 1e6 if v.ndim else v) for k, v in good().items()},  # finite, but overflows float16 merged
    "zero_d_down": edited(ATTN2_K, lora_down__weight=torch.tensor(0.5)),
    "vector_alpha": edited(ATTN2_K, alpha=torch.ones(4)),
    "missing_up": edited(ATTN2_K, lora_up__weight=None),
    "rank_mismatch": edited(ATTN2_K, lora_up__weight=torch.zeros(320, 3)),
    "wrong_in": edited(ATTN2_K, lora_down__weight=torch.zeros(4, 100)),
    "wrong_out": edited(TE_Q, lora_up__weight=torch.zeros(512, 4)),
    "sdxl": {**factors("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
             **factors("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280)},
    "flux": factors("lora_unet_double_blocks_0_img_attn_proj", 64, 64),
}


def name(kind):
    return f"{SUB}/{kind}.safetensors"


@pytest.fixture(scope="module")
def bad_files(comfy_server):
    folder = comfy_server.models / "loras" / SUB
    folder.mkdir(parents=True, exist_ok=True)
    for kind, tensors in FILES.items():
        save_file(tensors, str(folder / f"{kind}.safetensors"))  # written raw: save_lora would refuse some
    return folder


def snapshot(server):
    """Every file (hidden ones too) where these nodes write: LoRAs, checkpoints, grids."""
    roots = [server.models / "loras" / "atelier", server.models / "checkpoints" / "atelier",
             server.output_dir / "atelier" / "grids"]
    return {str(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def failure(comfy, prompt):
    """The error of a prompt that must fail: the node's exception (type: message) or the validation refusal."""
    try:
        prompt_id = comfy.queue(prompt)
    except ComfyError as e:
        assert e.status == 400, e
        return "refused: " + json.dumps(e.body)
    entry = comfy.wait(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "error", f"the prompt ran: {json.dumps(entry.get('outputs'))[:1500]}"
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    return f"{err['exception_type']}: {err['exception_message']}"


CKPT = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}
MODEL = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2]}
UNUSED = {f"{k}_{i}": v for i in range(2, 5) for k, v in (("lora", "(none)"), ("strength", 1.0))}


def merge_loras(lora_1="good", strength_1=1.0, lora_2=None, strength_2=1.0, **kw):
    inputs = {**UNUSED, "lora_1": name(lora_1) if lora_1 in FILES else lora_1, "strength_1": strength_1,
              "mode": "concat", "rank": 8, "dynamic_method": "none", "dynamic_param": 0.9,
              "output_name": "badinput_merged", **kw}
    if lora_2:
        inputs.update(lora_2=name(lora_2), strength_2=strength_2)
    return {"9": {"class_type": "AtelierMergeLoRAs", "inputs": inputs}}


def merge_into(lora_1="good", strength_1=1.0, block_weights_1=""):
    slots = {**UNUSED, **{f"block_weights_{i}": "" for i in range(2, 5)}}
    return {**CKPT, "9": {"class_type": "AtelierMergeLoRAIntoModel", "inputs": {
        **MODEL, **slots, "lora_1": name(lora_1) if lora_1 in FILES else lora_1, "strength_1": strength_1,
        "block_weights_1": block_weights_1, "checkpoint_name": "badinput_ckpt"}}}


def inspect(lora):
    return {**CKPT, "9": {"class_type": "AtelierInspectLoRA", "inputs": {
        "lora": name(lora) if lora in FILES else lora, "model": ["1", 0], "clip": ["1", 1]}}}


def resize(lora="good", **kw):
    return {"9": {"class_type": "AtelierResizeLoRA", "inputs": {
        "lora": name(lora), "rank": 2, "dynamic_method": "none", "dynamic_param": 0.9,
        "output_name": "badinput_resized", **kw}}}


def extract(**kw):
    return {**CKPT, "9": {"class_type": "AtelierExtractLoRA", "inputs": {
        "tuned_model": ["1", 0], "base_model": ["1", 0], "rank": 4, "dynamic_method": "none", "dynamic_param": 0.9,
        "include_convs": False, "min_diff": 0.0, "clamp_quantile": 1.0, "method": "randomized",
        "output_name": "badinput_extracted", **kw}}}


SAMPLING = {"seed": 0, "steps": 1, "cfg": 4.0, "sampler": "euler", "scheduler": "normal", "width": 64, "height": 64}


def xy_grid(lora="good", **kw):
    return {**CKPT, "9": {"class_type": "AtelierXYGrid", "inputs": {
        **MODEL, **SAMPLING, "positive": "x", "negative": "", "x_kind": "strength", "x_values": "1",
        "y_kind": "none", "y_values": "", "lora": name(lora), "strength": 1.0, "baseline": "none", "denoise": 1.0,
        "grid_name": "badinput_grid", "resume": False, **kw}}}


def strength_matrix(lora_a="good", lora_b="good", **kw):
    return {**CKPT, "9": {"class_type": "AtelierPlotStrengthMatrix", "inputs": {
        **MODEL, **SAMPLING, "lora_a": name(lora_a), "strengths_a": "1", "lora_b": name(lora_b),
        "strengths_b": "1", "positive": "x", "negative": "", "grid_name": "badinput_matrix", "resume": False,
        **kw}}}


def side_by_side(lora_a="good", strength_a=1.0, **kw):
    return {**CKPT, "9": {"class_type": "AtelierCompareSideBySide", "inputs": {
        **MODEL, **SAMPLING, "prompts": "x", "lora_a": name(lora_a), "strength_a": strength_a, "negative_a": "",
        "lora_b": "(none)", "strength_b": 1.0, "negative_b": "", "checkpoint_b": "(none)", "seeds": 1,
        "grid_name": "badinput_sbs", "resume": False, **kw}}}


# (id, description, prompt, substrings the error must hold)
CASES = [
    ("merge_nan_strength", "Merge LoRAs: strength_1 NaN", merge_loras(strength_1=NAN), ["strength_1 is nan"]),
    ("merge_bogus_mode", "Merge LoRAs: mode 'bogus' (would silently average)", merge_loras(mode="bogus"),
     ["Unknown mode \'bogus\'", "concat, svd, average_weights"]),
    ("merge_bogus_dynamic", "Merge LoRAs: dynamic_method 'bogus'", merge_loras(dynamic_method="bogus"),
     ["Unknown dynamic_method \'bogus\'", "sv_ratio"]),
    ("merge_nan_dynamic_param", "Merge LoRAs: dynamic_param NaN", merge_loras(mode="svd", dynamic_param=NAN),
     ["dynamic_param is nan"]),
    ("merge_unlisted_lora", "Merge LoRAs: a LoRA name not in the list", merge_loras(lora_1="nope.safetensors"),
     ["Unknown lora_1 \'nope.safetensors\'"]),
    ("merge_zero_d_down", "Merge LoRAs: 0-d lora_down", merge_loras("zero_d_down"),
     [f"'{name('zero_d_down')}'", f"{ATTN2_K}.lora_down.weight' is 0-d"]),
    ("merge_vector_alpha", "Merge LoRAs: alpha with 4 values", merge_loras("vector_alpha"),
     [f"{ATTN2_K}.alpha' should be one number", "shape (4,)"]),
    ("merge_missing_up", "Merge LoRAs: lora_down without lora_up", merge_loras("missing_up"),
     ["has no partner", f"{ATTN2_K}.lora_up.weight"]),
    ("merge_rank_mismatch", "Merge LoRAs: up rank 3, down rank 4", merge_loras("rank_mismatch"),
     ["is (320, 3) but", "(4, 768)"]),
    ("merge_sd15_with_sdxl", "Merge LoRAs: SD1.5 keys with SDXL te1/te2 keys", merge_loras("good", lora_2="sdxl"),
     [f"'{name('good')}' is for SD1.x but '{name('sdxl')}' is for SDXL"]),
    ("merge_sd15_with_flux", "Merge LoRAs: SD1.5 keys with Flux keys", merge_loras("good", lora_2="flux"),
     [f"'{name('good')}' is for SD1.x but '{name('flux')}' is for Flux / DiT"]),
    ("merge_overflow", "Merge LoRAs: finite inputs whose merge overflows float16", merge_loras("huge", 10.0),
     ["Refusing to write LoRA 'badinput_merged.safetensors'", "NaN/inf", "Nothing was written"]),
    ("mim_nan_strength", "Merge into Model: strength_1 NaN", merge_into(strength_1=NAN), ["strength_1 is nan"]),
    ("mim_nan_block_weight", "Merge into Model: NaN block weight",
     merge_into(block_weights_1=",".join(["1"] * 7 + ["nan"] + ["1"] * 9)), ["block_weights_1: block MID is nan"]),
    ("mim_huge_block_weight", "Merge into Model: block weight 1e308",
     merge_into(block_weights_1=",".join(["1e308"] + ["1"] * 16)), ["block_weights_1: block BASE is 1e+308"]),
    ("mim_inf_block_weight", "Merge into Model: block weight -inf",
     merge_into(block_weights_1=",".join(["1"] * 16 + ["-inf"])), ["block_weights_1: block OUT11 is -inf"]),
    ("mim_unlisted_lora", "Merge into Model: a LoRA name not in the list", merge_into(lora_1="../x.safetensors"),
     ["Unknown lora_1 \'../x.safetensors\'"]),
    ("mim_vector_alpha", "Merge into Model: alpha with 4 values (RuntimeError before)", merge_into("vector_alpha"),
     [f"{ATTN2_K}.alpha' should be one number"]),
    ("mim_missing_up", "Merge into Model: lora_down without lora_up (silently 'merged' before)",
     merge_into("missing_up"), ["has no partner"]),
    ("mim_rank_mismatch", "Merge into Model: up rank 3, down rank 4", merge_into("rank_mismatch"),
     ["is (320, 3) but"]),
    ("mim_wrong_in_features", "Merge into Model: lora_down in_features 100 for a 768-wide layer",
     merge_into("wrong_in"), [f"'{name('wrong_in')}' does not fit this model", f"'{ATTN2_K}' makes a (320, 100)",
                              "is (320, 768)"]),
    ("mim_wrong_out_features", "Merge into Model: lora_up out_features 512 for a 768-wide CLIP layer",
     merge_into("wrong_out"), [f"'{TE_Q}' makes a (512, 768)", "is (768, 768)"]),
    ("mim_sdxl_keys", "Merge into Model: an SDXL LoRA on SD1.5 (its te2 keys load nowhere)", merge_into("sdxl"),
     ["2 keys match no layer of this model", "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"]),
    ("inspect_zero_d_down", "Inspect: 0-d lora_down (IndexError before)", inspect("zero_d_down"),
     [f"{ATTN2_K}.lora_down.weight' is 0-d"]),
    ("inspect_unlisted", "Inspect: a LoRA name not in the list", inspect("gone.safetensors"),
     ["Unknown lora \'gone.safetensors\'"]),
    ("resize_bogus_dynamic", "Resize: dynamic_method 'bogus'", resize(dynamic_method="bogus"),
     ["Unknown dynamic_method \'bogus\'"]),
    ("resize_vector_alpha", "Resize: alpha with 4 values", resize("vector_alpha"), ["should be one number"]),
    ("extract_bogus_method", "Extract: method 'bogus'", extract(method="bogus"),
     ["Unknown method \'bogus\'", "randomized, full"]),
    ("extract_nan_min_diff", "Extract: min_diff NaN", extract(min_diff=NAN), ["min_diff is nan"]),
    ("xy_zero_d_down", "XY Grid: 0-d lora_down (IndexError before)", xy_grid("zero_d_down"),
     [f"{ATTN2_K}.lora_down.weight' is 0-d"]),
    ("xy_vector_alpha", "XY Grid: alpha with 4 values (RuntimeError before)", xy_grid("vector_alpha"),
     ["should be one number"]),
    ("xy_wrong_in_features", "XY Grid: LoRA whose in_features do not fit (console errors before)",
     xy_grid("wrong_in"), ["does not fit this model", "is (320, 768)"]),
    ("xy_nan_strength", "XY Grid: strength NaN", xy_grid(strength=NAN), ["strength is nan"]),
    ("xy_nan_cfg", "XY Grid: cfg NaN", xy_grid(cfg=NAN), ["cfg is nan"]),
    ("xy_huge_strength_axis", "XY Grid: strength axis value 1e30", xy_grid(x_values="0, 1e30"),
     ["axis 'strength': 1e+30 is outside -10 to 10"]),
    ("xy_million_steps_axis", "XY Grid: steps axis value 1000000", xy_grid(x_kind="steps", x_values="1000000"),
     ["axis 'steps': 1000000 is outside 1 to 200"]),
    ("xy_bogus_sampler", "XY Grid: sampler 'bogus'", xy_grid(sampler="bogus"), ["Unknown sampler \'bogus\'"]),
    ("matrix_zero_d_down", "Strength Matrix: 0-d lora_down (IndexError before)",
     strength_matrix("good", "zero_d_down"), ["is 0-d"]),
    ("matrix_wrong_out", "Strength Matrix: LoRA whose out_features do not fit", strength_matrix("good", "wrong_out"),
     ["does not fit this model", f"'{TE_Q}' makes a (512, 768)"]),
    ("sbs_nan_strength", "Side by Side: strength_a NaN", side_by_side(strength_a=NAN), ["strength_a is nan"]),
    ("sbs_rank_mismatch", "Side by Side: up rank 3, down rank 4", side_by_side("rank_mismatch"),
     ["is (320, 3) but"]),
]

BAD_INPUTS = [(case_id, description) for case_id, description, _, _ in CASES]


@pytest.mark.parametrize("prompt, expected", [c[2:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_writes_nothing(comfy, comfy_server, bad_files, prompt, expected):
    before = snapshot(comfy_server)
    message = failure(comfy, prompt)
    assert message.startswith("ValueError: "), message  # never a raw IndexError / RuntimeError / KeyError
    for part in expected:
        assert part in message, message
    assert str(comfy_server.workdir) not in message  # files are named relative to their root
    assert snapshot(comfy_server) == before  # no LoRA, checkpoint or grid appeared, not even a temp file


def test_inspect_reports_layers_that_do_not_fit(comfy, comfy_server, bad_files):
    report = json.loads(comfy.run(inspect("wrong_in"))["9"]["text"][0])
    fit = report["would_load"]
    assert fit["loads_cleanly"] is False and fit["not_loaded"] == 1
    assert fit["shape_mismatch"] == [f"'{ATTN2_K}' makes a (320, 100) change (up (320, 4), down (4, 100)) but the "
                                     "layer 'diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight' "
                                     "is (320, 768)"]
    clean = json.loads(comfy.run(inspect("good"))["9"]["text"][0])
    assert clean["would_load"]["loads_cleanly"] is True and clean["family"] == "SD1.x"


def test_a_good_lora_still_merges_and_its_checkpoint_is_finite(comfy, comfy_server, bad_files):
    from safetensors import safe_open

    text = comfy.run(merge_into("good", strength_1=10.0, block_weights_1=",".join(["10"] * 17)), timeout=600)
    path = comfy_server.models / "checkpoints" / "atelier" / "badinput_ckpt.safetensors"
    assert "badinput_ckpt.safetensors" in text["9"]["text"][0] and path.exists()
    with safe_open(str(path), "pt") as f:
        key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        assert math.isfinite(float(f.get_tensor(key).abs().max()))
    path.unlink()
