"""Run inside ComfyUI's Python: the XY Grid node's execute on one family's tiny model, CLIP and VAE.

usage: python grid_family_check.py ATELIER_CHECKOUT FAMILY   (sd2v, sdxl, sd3, flux, chroma, qwen_image, wan,
wan22)

The diffusion model and the comfy.sd.CLIP over the family's own text-encoder classes come from te_family_check.py's
builders (imported, so both checks build the same tiny models); for Chroma, Qwen-Image, Wan 2.1 and Wan 2.2 those
builders take the tiny model configs of tiny_dit.py and the family's own T5-XXL / Qwen2.5-VL / umT5 classes (umT5's
SentencePiece model ships inside Wan text-encoder files, so a small one is trained here; Qwen2.5-VL's config is built in
code, so its config class is narrowed while the CLIP is built). The VAE is comfy.sd.VAE detected from a random state
dict of ComfyUI's own autoencoders: the 4-channel SD VAE (SD2.x, SDXL), the 16-channel Flux / SD3 VAE, the Wan 2.1 (also
Qwen-Image's) and Wan 2.2 VAEs (full size: ComfyUI fixes their widths). A LoRA over the family's default targets (the
training node's lora_network, random up weights; text encoders too where te_family_check trains them) is saved into a
temporary loras folder. AtelierXYGrid.execute renders strengths 0, 0.5, 1 in one batch and 0 alone; each cell is
compared with a stock CLIPTextEncode + KSampler + VAEDecode run (LoraLoader for strengths above 0), all 8-bit as
SaveImage writes them. Prints one JSON line.
"""

import functools
import io
import json
import os
import sys
import tempfile
import time

import te_family_check as te  # noqa: E402  reads the same argv (checkout, family); builds comfy's tiny parts

import numpy as np  # noqa: E402
import torch  # noqa: E402

import comfy.ldm.models.autoencoder  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.text_encoders.llama  # noqa: E402
import comfy.text_encoders.pixart_t5  # noqa: E402
import comfy.text_encoders.qwen_image  # noqa: E402
import comfy.text_encoders.qwen_vl  # noqa: E402
import comfy.text_encoders.wan  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402  ComfyUI's nodes.py (stock LoraLoader, KSampler, VAEDecode)
import tiny_dit  # noqa: E402

from atelier.core.grid import read_png_metadata  # noqa: E402
from atelier.core.lora_io import save_lora  # noqa: E402
from atelier.core.lora_meta import HOST_FAMILIES, minimum_metadata  # noqa: E402
from atelier.nodes.grids import AtelierXYGrid  # noqa: E402
from atelier.nodes.training import lora_network, trainable_host  # noqa: E402
from atelier.trainers.network import NetworkConfig  # noqa: E402

FAMILY = sys.argv[2]
SIDE, STEPS, CFG, SEED, PROMPT = 64, 3, 4.0, 1, "x style"
LORA = f"grid_{FAMILY}.safetensors"
# families te_family_check has no CLIP for -> (tiny_dit family, CLIP class, tokenizer class, VAE builder); their
# LoRA is UNet only (ComfyUI maps no kohya prefix for umT5; Chroma's lone T5 LoRA is not part of this check)
DIT = {"chroma": ("Chroma", comfy.text_encoders.pixart_t5.pixart_te(), comfy.text_encoders.pixart_t5.PixArtTokenizer,
                  lambda: random_vae(16)),
       "qwen_image": ("QwenImage", comfy.text_encoders.qwen_image.QwenImageTEModel,
                      comfy.text_encoders.qwen_image.QwenImageTokenizer, tiny_dit.wan_vae),  # Qwen-Image: Wan 2.1 VAE
       "wan": ("WAN21", comfy.text_encoders.wan.WanT5Model, comfy.text_encoders.wan.WanT5Tokenizer, tiny_dit.wan_vae),
       "wan22": ("WAN22", comfy.text_encoders.wan.WanT5Model, comfy.text_encoders.wan.WanT5Tokenizer,
                 tiny_dit.wan22_vae)}
if FAMILY in DIT:  # te_family_check's builders with the family's tiny model and tiny text encoder
    te.config_class, te.unet_config, _, _ = tiny_dit.FAMILIES[DIT[FAMILY][0]]
    te.clip_class, te.tokenizer_class, te.train_t5 = DIT[FAMILY][1], DIT[FAMILY][2], False
if FAMILY == "qwen_image":  # Qwen2.5-VL's config is built in code: a tiny language model and a one-layer vision tower
    comfy.text_encoders.llama.Qwen25_7BVLI_Config = functools.partial(
        comfy.text_encoders.llama.Qwen25_7BVLI_Config, hidden_size=tiny_dit.CTX, intermediate_size=2 * tiny_dit.CTX,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer = functools.partial(
        comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer, intermediate_size=64, num_layers=1)


def spiece_model() -> bytes:
    """A small SentencePiece model (umT5's tokenizer ships inside Wan text-encoder files, not with ComfyUI), with
    umT5's special ids: pad 0, end 1."""
    import sentencepiece

    out = io.BytesIO()
    text = ["x style", "a red fox in the snow", "a blue bird on a branch", "an old house by the sea"] * 20
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=out, vocab_size=40,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                             minloglevel=2)
    return out.getvalue()


def random_vae(channels: int):
    """comfy.sd.VAE detected from a random state dict of its own SD-style autoencoder with `channels` latents."""
    ddconfig = {'double_z': True, 'z_channels': channels, 'resolution': 256, 'in_channels': 3, 'out_ch': 3,
                'ch': 128, 'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}
    with torch.device("meta"):  # shapes only
        shapes = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=channels).state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5 if v.ndim > 1  # ~1/sqrt(fan-in)
          else torch.ones(v.shape) if k.endswith("weight") else torch.zeros(v.shape)  # norms identity, biases 0
          for k, v in shapes.items()}
    if channels == 16:  # Flux / SD3 VAEs have no quant convs (ComfyUI then builds its AutoencodingEngine)
        sd = {k: v for k, v in sd.items() if "quant_conv" not in k}
    return comfy.sd.VAE(sd=sd)


def write_lora(patcher, clip, folder: str) -> int:
    """A LoRA over the family's default UNet and text-encoder targets with random up weights, saved as LORA."""
    with torch.inference_mode(False):
        host = trainable_host(patcher, clip, FAMILY not in DIT, te.train_t5)
        network, _ = lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        network.remove()
        tensors = network.kohya_state_dict(torch.float32)
    g = torch.Generator().manual_seed(3)
    scale = 2.0 if FAMILY == "qwen_image" else 0.5  # its tiny model's output moves less per unit of LoRA
    tensors = {k: torch.randn(v.shape, generator=g) * scale if "lora_up" in k else v for k, v in tensors.items()}
    family = HOST_FAMILIES.get(type(patcher.model.model_config).__name__, "unknown")
    save_lora(os.path.join(folder, LORA), tensors, minimum_metadata(family=family, dim=4, alpha=4.0))
    return len(tensors)


def stock(patcher, clip, vae, strength: float) -> np.ndarray:
    """Stock LoraLoader (above 0) + CLIPTextEncode + EmptyLatentImage + KSampler + VAEDecode, 8-bit as SaveImage."""
    model = patcher
    if strength:
        model, clip = comfy_nodes.LoraLoader().load_lora(patcher, clip, LORA, strength, strength)
    positive = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    side = SIDE // vae.spacial_compression_encode()  # EmptyLatentImage's zeros, at the VAE's scale (Wan 2.2: 16)
    latent = {"samples": torch.zeros(1, 4, side, side)}
    samples = comfy_nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "normal", positive, negative, latent)[0]
    pixels = comfy_nodes.VAEDecode().decode(vae, samples)[0]
    return eight_bit(pixels)[0]


def eight_bit(images) -> np.ndarray:
    return np.clip(255.0 * images.cpu().numpy(), 0, 255).astype(np.int16)  # SaveImage's conversion


def grid(patcher, clip, vae, strengths: str, batch_size: int):
    """AtelierXYGrid.execute over a strength axis; (grid image shape, cells as 8-bit arrays, report text)."""
    out = AtelierXYGrid.execute(
        patcher, clip, vae, PROMPT, "", "strength", strengths, "none", "", LORA, 1.0, "none", SEED, STEPS, CFG,
        "euler", "normal", 1.0, SIDE, SIDE, f"family_{FAMILY}", batch_size=batch_size, resume=False)
    sheet, files, cells = out.args if hasattr(out, "args") else out.result
    return list(sheet.shape), np.rint(cells.cpu().numpy() * 255).astype(np.int16), files, out.ui["text"][-1]


def main() -> dict:
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="atelier_grid_")
    loras, output = os.path.join(tmp, "loras"), os.path.join(tmp, "output")
    os.makedirs(loras)
    folder_paths.add_model_folder_path("loras", loras, is_default=True)
    folder_paths.set_output_directory(output)
    patcher = te.build_model()
    clip = te.build_clip({"spiece_model": spiece_model()} if FAMILY.startswith("wan") else None)
    vae = DIT[FAMILY][3]() if FAMILY in DIT else random_vae(te.latent_shape[0])
    result = {"family": FAMILY, "model": type(patcher.model).__name__, "clip": type(clip.cond_stage_model).__name__,
              "vae_channels": vae.latent_channels, "lora_keys": write_lora(patcher, clip, loras)}
    shape, cells, files, text = grid(patcher, clip, vae, "0,0.5,1", 3)
    meta = read_png_metadata(files.splitlines()[0])
    result.update(grid_shape=shape, cells_shape=list(cells.shape), report=text,
                  files=[os.path.relpath(f, output) for f in files.splitlines()],
                  meta_x=list(meta["axes"]["x"].values), meta_cells=len(meta["cells"]))
    alone = grid(patcher, clip, vae, "0", 1)[1]
    base = stock(patcher, clip, vae, 0.0)
    result["alone_equal"] = bool(np.array_equal(alone[0], base))
    diffs = {}
    for k, strength in enumerate((0.0, 0.5, 1.0)):
        reference = base if strength == 0 else stock(patcher, clip, vae, strength)
        d = np.abs(cells[k] - reference)
        diffs[str(strength)] = {"max": int(d.max()), "mean": float(d.mean()),
                                "effect": float(np.abs(cells[k] - cells[0]).mean())}
    result["diffs"] = diffs
    again = grid(patcher, clip, vae, "0,0.5,1", 3)[1]  # the same grid again: deterministic
    result["repeat_equal"] = bool(np.array_equal(again, cells))
    result["pixel_spread"] = float(base.std())  # the random VAE makes an image, not a flat colour
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        print(json.dumps(main()))
