"""B (CPU, tiny): full fine-tune peak memory and speed, with and without gradient checkpointing.

The model is tests/tiny_models.TinyUNet widened to 64 channels on 64×64 latents, batch 4, AdamW (or Adafactor),
fp32, trained through trainers.loop.Trainer with trainers.finetune.FullFineTune. Each variant runs in its own child
process, so its peak RSS (ru_maxrss) is its own. Figures from this tiny model show the direction, not SD sizes.
Usage: python benchmarks/finetune_memory.py [--steps 6] [--optimizer adamw] [--device cuda --width 320 --size 128]
On a GPU (`--device cuda`) the figure is torch's peak allocated device memory during training instead of RSS; widen the
model (`--width`) and the latents (`--size`) towards SD sizes there.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(checkpointing: bool, steps: int, optimizer: str, device: str = "cpu", width: int = 64,
          size: int = 64) -> None:
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import conftest  # noqa: F401  registers this checkout as the package `atelier`
    from tiny_models import TinyTextEncoder, TinyUNet

    from atelier.trainers import objectives as ob
    from atelier.trainers.finetune import FullFineTune
    from atelier.trainers.loop import Trainer, TrainConfig, TrainSample
    from atelier.trainers.memory import gradient_checkpointing

    unet, te, ms = TinyUNet(width=width).to(device), TinyTextEncoder().to(device), ob.DiscreteEps()
    g = torch.Generator().manual_seed(0)
    samples = [TrainSample(latent=torch.randn(4, size, size, generator=g), caption=f"tag{i}") for i in range(8)]
    tune = FullFineTune({"unet": unet})

    def denoise(x_t, sigma, cond, **extra):
        return unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma), cond)

    config = TrainConfig(max_steps=steps, batch_size=4, unet_lr=1e-5, optimizer=optimizer, save_every_epochs=0)
    trainer = Trainer(config, tune, denoise, ms, samples, lambda caps: (te(caps), {}), device=device)
    blocks = [unet.input_blocks[1][0], unet.out] if checkpointing else []
    scale = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale  # torch, models, data: before any step
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with gradient_checkpointing(blocks):
        trainer.run()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    params = sum(p.numel() for p in tune.parameters())
    out = {"gradient_checkpointing": checkpointing, "optimizer": optimizer, "s_per_step": seconds,
           "peak_rss_mib": rss / 2**20, "training_rss_mib": (rss - before) / 2**20, "trained_params": params}
    if cuda:  # on a GPU the device memory is what matters: peak allocated during training, above what was there
        out["training_rss_mib"] = (torch.cuda.max_memory_allocated() - allocated) / 2**20
        out["device"] = torch.cuda.get_device_name()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"))
    parser.add_argument("--child", choices=("plain", "checkpointed"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU machine")
    parser.add_argument("--width", type=int, default=64, help="model channels (SD1.5 uses 320)")
    parser.add_argument("--size", type=int, default=64, help="latent side (SD1.5 at 512² is 64)")
    args = parser.parse_args()
    if args.child:
        child(args.child == "checkpointed", args.steps, args.optimizer, args.device, args.width, args.size)
        return
    rows = []
    for variant in ("plain", "checkpointed"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                              "--optimizer", args.optimizer, "--device", args.device, "--width", str(args.width),
                              "--size", str(args.size)], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"full fine-tune, tiny UNet ({args.width} ch, {args.size}² latents, batch 4), {args.optimizer}, "
          f"{args.steps} steps, {args.device}, "
          f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    for r in rows:
        print(f"  gradient_checkpointing={r['gradient_checkpointing']!s:5}  {r['s_per_step']:.3f} s/step  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, +{r['training_rss_mib']:.0f} MiB while training "
              f"({'device memory' if args.device != 'cpu' else 'RSS'}; {r['trained_params']} params)")


if __name__ == "__main__":
    main()
