"""Provenance in shipped files: the checkpoint found through the prompt, its hashes (as A1111 / kohya compute them),
kohya's folder, count and bucket keys, kohya's minimum keys in every LoRA, LoCon's default targets."""

import hashlib
import json
import os

import pytest
import torch
from PIL import Image
from torch import nn

from atelier.core import dataset as ds
from atelier.core import provenance as pv
from atelier.core.lora_io import key_formats, lora_family, lora_summary
from atelier.core.lora_meta import (DYNAMIC, KOHYA_MINIMUM_KEYS, base_model_version, bucket_metadata, dataset_dirs,
                                    epochs_of, image_counts, tool_metadata)
from atelier.core.tagger import merge_caption
from atelier.trainers.data import kohya_metadata
from atelier.trainers.loop import TrainConfig
from atelier.trainers.network import (LoRANetwork, NetworkConfig, TE_INCLUDE, UNET_INCLUDE, extract_targets,
                                      with_default_targets)


# --- the checkpoint behind a MODEL input, from the queued prompt -------------------------------------------------

def prompt_with(*middle, loader=("CheckpointLoaderSimple", {"ckpt_name": "sd15/base.safetensors"})):
    """loader (node "1") -> each middle node in turn (its "model" linked to the previous) -> training node "9"."""
    prompt = {"1": {"class_type": loader[0], "inputs": dict(loader[1])}}
    previous = "1"
    for i, (cls, inputs) in enumerate(middle, start=2):
        prompt[str(i)] = {"class_type": cls, "inputs": {**inputs, "model": [previous, 0]}}
        previous = str(i)
    prompt["9"] = {"class_type": "AtelierTrainLoRA", "inputs": {"model": [previous, 0], "output_name": "x"}}
    return prompt


def test_the_checkpoint_is_found_through_lora_loaders_and_their_names_are_kept():
    found = pv.model_source(prompt_with(("LoraLoader", {"lora_name": "style.safetensors", "strength_model": 0.8,
                                                        "strength_clip": 1.0}),
                                        ("ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": False})), 9)
    assert found["file"] == "sd15/base.safetensors" and found["folder"] == "checkpoints"
    assert found["loader"] == "CheckpointLoaderSimple"
    assert found["chain"] == [{"node": "LoraLoader", "loras": ["style.safetensors"], "strengths": [0.8]},
                              {"node": "ModelSamplingDiscrete"}]


def test_a_diffusion_model_loader_is_found_in_its_own_folder():
    found = pv.model_source(prompt_with(loader=("UNETLoader", {"unet_name": "flux1-dev.safetensors",
                                                               "weight_dtype": "default"})), "9")
    assert (found["file"], found["folder"], found["loader"]) == ("flux1-dev.safetensors", "diffusion_models",
                                                                 "UNETLoader")


@pytest.mark.parametrize("prompt, node, why", [
    (None, "9", "the queued prompt was not available"),
    ({"9": {"class_type": "T", "inputs": {"model": ["5", 0]}}}, "9", "'model' is not linked to a node"),
    (prompt_with(("ModelMergeSimple", {"model1": ["1", 0], "ratio": 0.5})), "9", "no single 'model' input"),
    (prompt_with(loader=("CheckpointLoaderSimple", {"ckpt_name": ["7", 0]})), "9", "is not a plain name"),
])
def test_no_name_is_made_up_when_the_chain_does_not_end_at_a_loader(prompt, node, why):
    if prompt is not None and "2" in prompt and prompt["2"]["class_type"] == "ModelMergeSimple":
        del prompt["2"]["inputs"]["model"]  # a merge has model1 / model2, not one model to follow
    found = pv.model_source(prompt, node)
    assert found["file"] is None and why in found["why"]


def test_a_cyclic_prompt_ends_the_walk_and_absolute_names_keep_only_the_file_name():
    cyclic = {"1": {"class_type": "A", "inputs": {"model": ["2", 0]}},
              "2": {"class_type": "B", "inputs": {"model": ["1", 0]}},
              "9": {"class_type": "T", "inputs": {"model": ["1", 0]}}}
    assert "more than" in pv.model_source(cyclic, "9")["why"]
    odd = prompt_with(loader=("CheckpointLoaderSimple", {"ckpt_name": "/srv/secret/models/base.safetensors"}))
    assert pv.model_source(odd, "9")["file"] == "base.safetensors"


# --- hashes other tools compute, hashed once ------------------------------------------------------------------

def test_file_hashes_are_a1111s_and_kohyas_and_a_file_is_hashed_once(tmp_path):
    path = tmp_path / "model.safetensors"
    data = os.urandom(0x100000 + 0x10000 + 12345)
    path.write_bytes(data)
    pv._hashes.clear()
    ticks = []
    cache = tmp_path / "cache" / "file_hashes.json"
    got = pv.file_hashes(path.resolve(), cache_file=cache, tick=lambda: ticks.append(1))
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["legacy"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]  # A1111's old model hash
    assert pv.autov2(got["sha256"]) == got["sha256"][:10] and ticks
    assert str(tmp_path) not in cache.read_text()  # the cache names no server path
    # same size and mtime, other bytes: not read again, in this process or the next (through the cache file)
    stat = path.stat()
    path.write_bytes(bytes(len(data)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert pv.file_hashes(path.resolve(), cache_file=cache) == got
    pv._hashes.clear()
    assert pv.file_hashes(path.resolve(), cache_file=cache) == got
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    assert pv.file_hashes(path.resolve(), cache_file=cache)["sha256"] == hashlib.sha256(bytes(len(data))).hexdigest()


def test_a_cancel_while_hashing_stops_it_and_caches_nothing(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(os.urandom(pv.CHUNK + 10))
    pv._hashes.clear()

    def cancel():
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        pv.file_hashes(path.resolve(), cache_file=tmp_path / "h.json", tick=cancel)
    assert not pv._hashes and not (tmp_path / "h.json").exists()


# --- kohya's minimum keys in every LoRA file ------------------------------------------------------------------

def lora(ranks, alphas=None, conv=None, prefix="lora_unet_m", width=768):
    """kohya tensors with one linear module per rank (attn2 to_k of `width` inputs) and optional 3×3 conv ranks."""
    out = {}
    for i, r in enumerate(ranks):
        base = f"{prefix}{i}_attn2_to_k"
        out[base + ".lora_down.weight"] = torch.randn(r, width)
        out[base + ".lora_up.weight"] = torch.randn(320, r)
        out[base + ".alpha"] = torch.tensor(float(alphas[i] if alphas else r))
    for i, r in enumerate(conv or []):
        base = f"{prefix}{i}_in_layers_2"
        out[base + ".lora_down.weight"] = torch.randn(r, 320, 3, 3)
        out[base + ".lora_up.weight"] = torch.randn(320, r, 1, 1)
        out[base + ".alpha"] = torch.tensor(1.0)
    return out


def test_tool_files_get_kohyas_minimum_keys_and_dynamic_where_ranks_differ():
    same = tool_metadata(lora([4, 4]))
    assert set(KOHYA_MINIMUM_KEYS) <= set(same)
    assert (same["ss_network_dim"], same["ss_network_alpha"], same["ss_v2"], same["ss_base_model_version"],
            same["ss_network_module"], json.loads(same["ss_network_args"])) == \
        ("4", "4.0", "False", "sd_v1", "networks.lora", {})
    mixed = tool_metadata(lora([4, 8]))
    assert mixed["ss_network_dim"] == DYNAMIC and mixed["ss_network_alpha"] == DYNAMIC  # kohya's merge rule
    dynamic = tool_metadata(lora([4, 4]), dynamic=True)
    assert dynamic["ss_network_dim"] == DYNAMIC and dynamic["ss_network_alpha"] == DYNAMIC  # kohya's resize
    locon = tool_metadata(lora([4], conv=[2, 2]))
    assert locon["ss_network_dim"] == "4" and json.loads(locon["ss_network_args"]) == {"conv_dim": "2",
                                                                                      "conv_alpha": "1.0"}


def test_the_base_version_follows_the_family_or_the_sources():
    assert tool_metadata(lora([4], width=1024))["ss_v2"] == "True"
    assert tool_metadata(lora([4], width=1024))["ss_base_model_version"] == "sd_v2"
    assert tool_metadata(lora([4], width=2048))["ss_base_model_version"] == "sdxl_base_v1-0"
    assert base_model_version("SD2.x", v_prediction=True) == "sd_v2_v"
    assert base_model_version("Something new") == "unknown"
    kept = tool_metadata(lora([4]), sources=[{"ss_base_model_version": "sd_v1_v"}] * 2)
    assert kept["ss_base_model_version"] == "sd_v1_v"  # a resized / merged file keeps what its sources say
    disagree = tool_metadata(lora([4]), sources=[{"ss_base_model_version": "sd_v1_v"}, {}])
    assert disagree["ss_base_model_version"] == "sd_v1"
    given = tool_metadata(lora([4]), family="SD2.x", v_prediction=True)  # extraction knows the host model
    assert (given["ss_v2"], given["ss_base_model_version"]) == ("True", "sd_v2_v")


# --- training metadata: folders by name, kohya's counts, buckets, the base model ----------------------------------

@pytest.fixture
def kohya_folders(tmp_path):
    """input/train/10_elf (3 images), input/train/2_hat (1 image, 60×20) and input/reg/1_person (2 images)."""
    layout = {"train/10_elf": [(32, 32)] * 3, "train/2_hat": [(60, 20)], "reg/1_person": [(32, 32)] * 2}
    for folder, sizes in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (10 * i, 0, 0)).save(tmp_path / folder / f"{i}.png")
            (tmp_path / folder / f"{i}.txt").write_text(f"Elf, blue, tag{i}", encoding="utf-8")
    train = ds.scan_folder(tmp_path / "train", caption_source="sidecar", name="elf")
    reg = ds.scan_folder(tmp_path / "reg", caption_source="sidecar", role="regularization", name="person",
                         prior_loss_weight=0.7)
    return ds.with_preparation(ds.combine(train, reg), ds.Preparation("buckets", 32, 32, bucket_step=16))


def test_folders_are_named_like_kohya_with_reg_folders_apart_and_no_server_path(kohya_folders, tmp_path):
    train, reg, tags = dataset_dirs(kohya_folders)
    assert train == {"10_elf": {"n_repeats": 10, "img_count": 3}, "2_hat": {"n_repeats": 2, "img_count": 1}}
    assert reg == {"1_person": {"n_repeats": 1, "img_count": 2}}
    assert set(tags) == {"10_elf", "2_hat"} and tags["10_elf"]["elf"] == 3  # lower-cased, training folders only
    assert image_counts(kohya_folders) == {"ss_num_train_images": "32", "ss_num_reg_images": "2"}  # 3×10 + 1×2
    meta = kohya_metadata(config=TrainConfig(epochs=4), network_config=NetworkConfig(rank=8, alpha=4.0),
                          dataset=kohya_folders, output_name="elf", steps=20, epoch=2, started=1.0, finished=2.0,
                          base=pv.BaseModel("BaseModel", family="SD1.x", file="sd15/base.safetensors",
                                            folder="checkpoints", sha256="ab" * 32, legacy_hash="12345678",
                                            fingerprint="f" * 16),
                          total_steps=40, steps_per_epoch=10)
    assert str(tmp_path) not in json.dumps(meta) and "input/" not in json.dumps(meta)
    assert json.loads(meta["ss_reg_dataset_dirs"]) == reg and json.loads(meta["ss_dataset_dirs"]) == train
    assert meta["ss_prior_loss_weight"] == "0.7"
    assert (meta["ss_sd_model_name"], meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"]) == \
        ("base.safetensors", "12345678", "ab" * 32)
    assert (meta["ss_epoch"], meta["ss_num_epochs"], meta["ss_max_train_steps"]) == ("2", "4", "40")
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_network_dim"]) == ("sd_v1", "False", "8")
    assert json.loads(meta["atelier_base_model"])["autov2"] == "abababab" + "ab"
    assert "atelier_base_patches" not in meta
    subsets = json.loads(meta["atelier_subsets"])
    assert [(s["name"], s["role"], s["folders"]) for s in subsets] == [("elf", "train", ["10_elf", "2_hat"]),
                                                                       ("person", "regularization", ["1_person"])]


def test_bucket_keys_count_each_bucket_with_repeats(kohya_folders):
    meta = bucket_metadata(kohya_folders)
    assert meta["ss_enable_bucket"] == "True" and meta["ss_resolution"] == "(32, 32)"
    buckets = {tuple(b["resolution"]): b["count"] for b in json.loads(meta["ss_bucket_info"])["buckets"].values()}
    assert buckets[(32, 32)] == 3 * 10 + 2 * 1 and sum(buckets.values()) == 3 * 10 + 2 + 2 * 1  # the hat is wider
    assert int(meta["ss_min_bucket_reso"]) < 32 < int(meta["ss_max_bucket_reso"])


def test_an_unknown_base_says_so_and_patches_are_recorded(kohya_folders):
    base = pv.BaseModel("BaseModel", family="SD1.x", fingerprint="0123456789abcdef", why="no loader upstream",
                        patches={"patched_keys": 12, "patches": 12},
                        chain=({"node": "LoraLoader", "loras": ["style.safetensors"], "strengths": [1.0]},))
    meta = kohya_metadata(config=TrainConfig(), network_config=NetworkConfig(rank=4, alpha=4.0),
                          dataset=kohya_folders, output_name="x", steps=5, epoch=0, started=1.0, finished=2.0,
                          base=base, total_steps=5, steps_per_epoch=10)
    assert meta["ss_sd_model_name"] == "BaseModel" and "ss_sd_model_hash" not in meta  # kohya: no file, no hash
    record = json.loads(meta["atelier_base_model"])
    assert record["unknown_because"] == "no loader upstream" and record["fingerprint"] == "0123456789abcdef"
    patches = json.loads(meta["atelier_base_patches"])
    assert patches["patched_keys"] == 12 and patches["chain"][0]["loras"] == ["style.safetensors"]
    assert (meta["ss_epoch"], meta["ss_num_epochs"]) == ("1", "1")  # 5 of 10 steps: epoch 1 of 1, as kohya saves


@pytest.mark.parametrize("steps, total, per, epoch, epochs", [(10, 40, 10, 1, 4), (11, 40, 10, 2, 4),
                                                              (40, 40, 10, 4, 4), (7, 7, 10, 1, 1)])
def test_epochs_follow_kohyas_convention(steps, total, per, epoch, epochs):
    assert epochs_of(steps, total, per) == {"ss_epoch": str(epoch), "ss_num_epochs": str(epochs)}


# --- LoCon with default targets trains the ResNet / down / up-sample layers ---------------------------------------

class ResBlock(nn.Module):
    """ComfyUI's ResBlock names: in_layers.2 and out_layers.3 (3×3), emb_layers.1 (linear), 1x1 skip."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(4, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(32, c_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(4, c_out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()


class Named(nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def ldm_unet():
    """conv_in, a ResBlock, a transformer's proj_in / attn2, a Downsample (op), an Upsample (conv), conv_out."""
    attn = Named(to_q=nn.Linear(16, 16), to_k=nn.Linear(8, 16))
    return Named(
        time_embed=nn.Sequential(nn.Linear(16, 32)),
        input_blocks=nn.ModuleList([nn.ModuleList([nn.Conv2d(4, 16, 3, padding=1)]),
                                    nn.ModuleList([ResBlock(16, 16), Named(proj_in=nn.Conv2d(16, 16, 1),
                                                  transformer_blocks=nn.ModuleList([Named(attn2=attn)]))]),
                                    nn.ModuleList([Named(op=nn.Conv2d(16, 16, 3, stride=2, padding=1))])]),
        output_blocks=nn.ModuleList([nn.ModuleList([ResBlock(32, 16), Named(conv=nn.Conv2d(16, 16, 3, padding=1))])]),
        out=nn.Sequential(nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 4, 3, padding=1)))


def test_locon_with_default_targets_adapts_resnet_and_sampling_convs_like_kohya():
    unet = ldm_unet()
    plain = LoRANetwork({"lora_unet": unet}, with_default_targets(NetworkConfig(rank=2, alpha=1.0, conv_rank=0)))
    locon = LoRANetwork({"lora_unet": unet}, with_default_targets(NetworkConfig(rank=2, alpha=1.0, conv_rank=3)))
    added = {k: m for k, m in locon.modules_by_key.items() if k not in plain.modules_by_key}
    assert set(added) == {"lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_1_0_emb_layers_1",
                          "lora_unet_input_blocks_1_0_out_layers_3", "lora_unet_input_blocks_2_0_op",
                          "lora_unet_output_blocks_0_0_in_layers_2", "lora_unet_output_blocks_0_0_emb_layers_1",
                          "lora_unet_output_blocks_0_0_out_layers_3", "lora_unet_output_blocks_0_0_skip_connection",
                          "lora_unet_output_blocks_0_1_conv"}  # conv_in, conv_out and time_embed stay out (kohya)
    state = locon.kohya_state_dict()
    down = state["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"]
    assert tuple(down.shape) == (3, 16, 3, 3)  # conv_rank, 3×3 kernel
    assert state["lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight"].shape == (2, 32)  # linear: main rank
    assert state["lora_unet_output_blocks_0_0_skip_connection.lora_down.weight"].shape == (2, 32, 1, 1)
    assert with_default_targets(NetworkConfig(target_patterns=("attn2",), conv_rank=3)).target_patterns == ("attn2",)
    assert with_default_targets(NetworkConfig()).target_patterns == (UNET_INCLUDE, TE_INCLUDE)


def test_extraction_with_convs_keeps_the_resnet_linears():
    shapes = {"diffusion_model.input_blocks.1.0.emb_layers.1.weight": (16, 32),
              "diffusion_model.input_blocks.1.0.in_layers.0.weight": (16,),  # a GroupNorm: never a target
              "diffusion_model.input_blocks.1.0.in_layers.2.weight": (16, 16, 3, 3),
              "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (16, 8),
              "diffusion_model.time_embed.0.weight": (32, 16)}
    assert extract_targets(shapes, UNET_INCLUDE, convs=False) == [
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    assert sorted(extract_targets(shapes, UNET_INCLUDE, convs=True)) == [
        "diffusion_model.input_blocks.1.0.emb_layers.1.weight", "diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]


# --- Inspect reads ComfyUI-format LoRAs; Tag Dataset's append keeps the existing caption --------------------------

def comfy_format(clip: str = "clip_l", width: int = 768):
    """What ComfyUI's LoraSave writes: diffusion_model.* / text_encoders.* modules without alpha, plus diff_b."""
    return {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_up.weight": torch.zeros(320, 4),
            "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_down.weight": torch.ones(4, width),
            "diffusion_model.input_blocks.1.1.proj_in.diff_b": torch.zeros(320),
            f"text_encoders.{clip}.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight":
                torch.zeros(width, 4),
            f"text_encoders.{clip}.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight":
                torch.ones(4, width)}


def test_comfyui_format_loras_are_summarised_and_their_family_read():
    tensors = comfy_format()
    summary = lora_summary(tensors, {})
    assert summary["modules"] == 2 and summary["prefixes"] == {"diffusion_model": 1, "text_encoders.clip_l": 1}
    assert summary["other_keys"] == ["diffusion_model.input_blocks.1.1.proj_in.diff_b"]
    assert lora_family(tensors) == "SD1.x" and key_formats(tensors) == ["ComfyUI"]
    assert lora_family(comfy_format("clip_g", 2048)) == "SDXL"
    assert key_formats({**tensors, **lora([4])}) == ["kohya", "ComfyUI"]


@pytest.mark.parametrize("old, mode, expected", [
    ("Korra, korra,  Blue ,", "append", "Korra, korra,  Blue, long hair"),  # existing part untouched
    ("Korra, korra,  Blue", "prepend", "long hair, Korra, korra,  Blue"),
    ("blue, long hair", "append", "blue, long hair"),  # nothing new: the caption as it was
    ("a\\, b", "append", "a\\, b, blue, long hair"),  # an escaped comma stays in its tag
])
def test_append_and_prepend_keep_the_existing_tags_as_they_were(old, mode, expected):
    assert merge_caption(old, "blue, long hair, Long Hair", mode) == expected
