"""B (CPU, tiny): full fine-tune peak memory and speed, with and without gradient checkpointing.

The model is tests/tiny_models.TinyUNet widened to 64 channels on 64×64 latents, batch 4, AdamW (or Adafactor),
fp32, trained through trainers.loop.Trainer with trainers.finetune.FullFineTune. Each variant runs in its own child
process, so its peak RSS (ru_maxrss) is its own. Figures from this tiny model show the direction, not SD sizes.
Usage: python benchmarks/finetune_memory.py [--steps 6] [--optimizer adamw]
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


def child(checkpointing: bool, steps: int, optimizer: str) -> None:
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import conftest  # noqa: F401  registers this checkout as the package `atelier`
    from tiny_models import TinyTextEncoder, TinyUNet

    from atelier.trainers import objectives as ob
    from atelier.trainers.finetune import FullFineTune
    from atelier.trainers.loop import Trainer, TrainConfig, TrainSample
    from atelier.trainers.memory import gradient_checkpointing

    unet, te, ms = TinyUNet(width=64), TinyTextEncoder(), ob.DiscreteEps()
    g = torch.Generator().manual_seed(0)
    samples = [TrainSample(latent=torch.randn(4, 64, 64, generator=g), caption=f"tag{i}") for i in range(8)]
    tune = FullFineTune({"unet": unet})

    def denoise(x_t, sigma, cond, **extra):
        return unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma), cond)

    config = TrainConfig(max_steps=steps, batch_size=4, unet_lr=1e-5, optimizer=optimizer, save_every_epochs=0)
    trainer = Trainer(config, tune, denoise, ms, samples, lambda caps: (te(caps), {}))
    blocks = [unet.input_blocks[1][0], unet.out] if checkpointing else []
    scale = 1 if sys.platform == "darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale  # torch, models, data: before any step
    start = time.perf_counter()
    with gradient_checkpointing(blocks):
        trainer.run()
    seconds = (time.perf_counter() - start) / steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    params = sum(p.numel() for p in tune.parameters())
    print(json.dumps({"gradient_checkpointing": checkpointing, "optimizer": optimizer, "s_per_step": seconds,
                      "peak_rss_mib": rss / 2**20, "training_rss_mib": (rss - before) / 2**20,
                      "trained_params": params}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"))
    parser.add_argument("--child", choices=("plain", "checkpointed"))
    args = parser.parse_args()
    if args.child:
        child(args.child == "checkpointed", args.steps, args.optimizer)
        return
    rows = []
    for variant in ("plain", "checkpointed"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                              "--optimizer", args.optimizer], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"full fine-tune, tiny UNet (64 ch, 64² latents, batch 4), {args.optimizer}, {args.steps} steps, "
          f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    for r in rows:
        print(f"  gradient_checkpointing={r['gradient_checkpointing']!s:5}  {r['s_per_step']:.3f} s/step  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, "
              f"+{r['training_rss_mib']:.0f} MiB while training  ({r['trained_params']} params)")


if __name__ == "__main__":
    main()
