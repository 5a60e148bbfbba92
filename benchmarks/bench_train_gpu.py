"""B3 (GPU): LoRA training throughput on a full-size SD1.5-shaped UNet — Atelier vs ComfyUI's native Train LoRA.

Random-weight SD1.5 UNet built from ComfyUI's own classes (no download), cached latents at 512² (64×64), random
CLIP-L-shaped conditioning (77×768), rank 32, AdamW, bf16 autocast, batch 1 and 8. Reports samples/s, peak VRAM
and MFU, counting 1.80 TFLOP per training sample (forward + backward with cached latents) against the device's
dense bf16 peak. Run with ComfyUI's Python from a ComfyUI checkout (cwd), e.g. on an H100/H200:
    python /path/to/atelier/benchmarks/bench_train_gpu.py --checkout /path/to/atelier [--steps 30]
`--tiny --device cpu` runs the same code paths on a small UNet, to check the script without a GPU.
"""

import argparse
import json
import os
import sys
import time

TFLOP_PER_SAMPLE = 1.80
BF16_DENSE_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0}


def load_atelier(root):
    sys.path.insert(0, os.path.join(root, "tests"))
    import conftest  # noqa: F401  registers the checkout as the package `atelier`


def build_model(tiny: bool, device):
    import torch

    import comfy.model_patcher
    import comfy.supported_models

    full = dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                transformer_depth_middle=1, num_heads=8)
    small = dict(model_channels=64, channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
                 transformer_depth_output=[1, 1], transformer_depth_middle=1, num_heads=2)
    cfg = dict(context_dim=768, use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
               in_channels=4, out_channels=4, num_head_channels=-1, image_size=64, use_spatial_transformer=True,
               legacy=False, use_temporal_resblock=False, **(small if tiny else full))
    model = comfy.supported_models.SD15(cfg).get_model({})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def run_ours(patcher, latents, conds, batch, steps, device):
    import torch

    from atelier.nodes.train_adapter import UNET_INCLUDE, ComfyDenoiser
    from atelier.trainers.loop import Trainer, TrainConfig, TrainSample
    from atelier.trainers.network import LoRANetwork, NetworkConfig

    for p in patcher.model.parameters():
        p.requires_grad_(False)
    denoise = ComfyDenoiser(patcher)
    samples = [TrainSample(latent=latents[i], caption=f"c{i}") for i in range(len(latents))]
    network = LoRANetwork({"lora_unet": patcher.model.diffusion_model},
                          NetworkConfig(rank=32, alpha=16.0, target_patterns=(UNET_INCLUDE,))).to(device)
    encode = lambda caps: (torch.stack([conds[int(c[1:])] for c in caps]), {})
    cfg = TrainConfig(max_steps=steps, batch_size=batch, unet_lr=1e-4, save_every_epochs=0,
                      precision="bf16" if device.type == "cuda" else "fp32")
    trainer = Trainer(cfg, network, denoise, denoise.model_sampling, samples, encode, device=device)
    trainer.precompute_text()
    warm = Trainer(cfg.__class__(**{**cfg.to_dict(), "max_steps": 2}), network, denoise, denoise.model_sampling,
                   samples, encode, device=device)
    warm.run()
    sync(device)
    t = time.perf_counter()
    trainer.run()
    sync(device)
    return time.perf_counter() - t


def run_native(patcher, latents, conds, batch, steps, device):
    import torch

    import comfy_extras.nodes_train as nt

    positive = [[conds[i][None], {}] for i in range(len(latents))]
    with torch.inference_mode():
        t = time.perf_counter()
        nt.TrainLoraNode().train(patcher, {"samples": torch.stack(latents)}, positive, batch_size=batch, steps=steps,
                                 grad_accumulation_steps=1, learning_rate=1e-4, rank=32, optimizer="AdamW",
                                 loss_function="MSE", seed=0,
                                 training_dtype="bf16" if device.type == "cuda" else "fp32",
                                 lora_dtype="bf16" if device.type == "cuda" else "fp32", algorithm="LoRA",
                                 gradient_checkpointing=False, existing_lora="[None]")
        sync(device)
        return time.perf_counter() - t


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", required=True, help="the Atelier checkout")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    args = ap.parse_args()
    sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    if args.device == "cpu":
        comfy.cli_args.args.cpu = True
    import torch

    load_atelier(args.checkout)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_DENSE_TFLOPS.items() if k.split()[0] in name and
                                     (len(k.split()) == 1 or k.split()[1] in name)), None)
    g = torch.Generator().manual_seed(0)
    size = 8 if args.tiny else 64
    latents = [torch.randn(4, size, size, generator=g) for _ in range(16)]
    conds = [torch.randn(77, 768, generator=g) for _ in range(16)]
    rows = []
    for batch in (1, 8):
        for which, fn in (("atelier", run_ours), ("native", run_native)):
            patcher = build_model(args.tiny, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = fn(patcher, latents, conds, batch, args.steps, device)
            sps = args.steps * batch / seconds
            row = {"which": which, "batch": batch, "samples_per_second": round(sps, 3),
                   "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda"
                   else None, "mfu": round(sps * TFLOP_PER_SAMPLE / peak, 4) if peak and not args.tiny else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del patcher
    print(json.dumps({"device": name, "torch": torch.__version__, "steps": args.steps, "tiny": args.tiny}))


if __name__ == "__main__":
    main()
