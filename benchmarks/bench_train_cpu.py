"""B1 (CPU): LoRA training speed and memory — Atelier's Train LoRA vs ComfyUI's native Train LoRA node.

Same fixture checkpoint (random-weight SD1.5-shaped, see tests/host), same 8 images at 64², same captions, rank 8,
lr 1e-4, batch 1, fp32, the same number of steps. Each side runs in its own child process under ComfyUI's Python
(so peak memory is measured separately): the child loads the checkpoint, encodes the latents, then times
training from adapter creation to the last step. Each tool trains its own default set of layers (ours: kohya's
transformer blocks; native: every weight), which the report states.
Usage: python benchmarks/bench_train_cpu.py [--steps 30]   (finds ComfyUI like the host tests do)
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(which: str, steps: int, checkpoint: str) -> None:
    sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    comfy.cli_args.args.cpu = True

    import numpy as np
    import torch

    import comfy.sd
    import folder_paths

    tmp = tempfile.mkdtemp()
    folder_paths.add_model_folder_path("loras", tmp, is_default=True)  # never write into the real checkout
    folder_paths.set_output_directory(tmp)
    rng = np.random.default_rng(0)
    images = [(rng.random((8, 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1) for _ in range(8)]
    captions = [f"blonde elf, pose {i}" for i in range(8)]
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "native":
        import comfy_extras.nodes_train as nt

        with torch.inference_mode():
            pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)
            latents = {"samples": vae.encode(pixels)}
            positive = [clip.encode_from_tokens_scheduled(clip.tokenize(c))[0] for c in captions]
            t = time.perf_counter()
            nt.TrainLoraNode().train(model, latents, positive, batch_size=1, steps=steps, grad_accumulation_steps=1,
                                     learning_rate=1e-4, rank=8, optimizer="AdamW", loss_function="MSE", seed=0,
                                     training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA",
                                     gradient_checkpointing=False, existing_lora="[None]")
            seconds = time.perf_counter() - t
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        import conftest  # noqa: F401  registers this checkout as the package `atelier`
        from atelier.core.dataset import from_arrays
        from atelier.nodes.training import train_lora
        from atelier.trainers.loop import TrainConfig
        from atelier.trainers.network import NetworkConfig

        dataset = from_arrays(images, captions)
        with torch.inference_mode():
            _, _, _, report, _ = train_lora(model, clip, vae, dataset, "bench",
                                            TrainConfig(max_steps=steps, batch_size=1, unet_lr=1e-4,
                                                        save_every_epochs=0),
                                            NetworkConfig(rank=8, alpha=8.0))
        seconds = report["train_seconds"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"which": which, "seconds": seconds, "steps_per_second": steps / seconds,
                      "peak_rss_mib": peak / 1024, "training_rss_increase_mib": (peak - base_rss) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", choices=["ours", "native"])
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps, args.checkpoint)
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_host import find_checkout, find_python, fixture_checkpoint

    checkout, why = find_checkout()
    if checkout is None:
        sys.exit(f"B1 needs a ComfyUI checkout: {why}")
    python = find_python(checkout)
    ckpt = str(fixture_checkpoint(checkout, python))
    results = {}
    for which in ("native", "ours", "native", "ours"):  # alternate; keep each side's best
        proc = subprocess.run([python, __file__, "--child", which, "--steps", str(args.steps), "--checkpoint", ckpt],
                              cwd=checkout, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if which not in results or r["seconds"] < results[which]["seconds"]:
            results[which] = r
    o, n = results["ours"], results["native"]
    print(f"native TrainLoraNode: {n['steps_per_second']:.2f} steps/s, peak RSS {n['peak_rss_mib']:.0f} MiB "
          f"(+{n['training_rss_increase_mib']:.0f} MiB while training)")
    print(f"Atelier Train LoRA:   {o['steps_per_second']:.2f} steps/s, peak RSS {o['peak_rss_mib']:.0f} MiB "
          f"(+{o['training_rss_increase_mib']:.0f} MiB while training)")
    print(f"speed ratio: {o['steps_per_second'] / n['steps_per_second']:.2f}x (goal >= 1.3x); peak memory ratio: "
          f"{o['peak_rss_mib'] / n['peak_rss_mib']:.2f} (goal <= 1.0)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; ComfyUI at {checkout}; {args.steps} steps, rank 8, "
          "64², batch 1, fp32")


if __name__ == "__main__":
    main()
