"""B2 (CPU): trainer overhead — trainers.loop.Trainer vs a bare hand-written torch loop on the same small model.

Both train the same LoRA network (rank 8) on the same UNet-shaped model (tests/tiny_models.TinyUNet widened to
64 channels, 32×32 latents, batch 4) for the same number of AdamW steps with ε-prediction and the same σ range.
The bare loop is what one would write by hand: sample, noise, forward, MSE, backward, step. The Trainer adds
per-sample RNG streams, bucketing, caption caching, the objective derivation, grad clipping and callbacks.
Runs alternate and each side's median is reported. Usage: python benchmarks/bench_trainer_overhead.py [--steps 60]
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  registers this checkout as the package `atelier`
from tiny_models import TinyTextEncoder, TinyUNet  # noqa: E402

from atelier.core import __version__  # noqa: E402
from atelier.trainers import objectives as ob  # noqa: E402
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample  # noqa: E402
from atelier.trainers.network import LoRANetwork, NetworkConfig  # noqa: E402


def setup(n_images: int = 16, width: int = 64, size: int = 32):
    unet, te, ms = TinyUNet(width=width), TinyTextEncoder(), ob.DiscreteEps()
    for p in list(unet.parameters()) + list(te.parameters()):
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    samples = [TrainSample(latent=torch.randn(4, size, size, generator=g), caption=f"tag{i % 4}, pose")
               for i in range(n_images)]
    network = LoRANetwork({"lora_unet": unet}, NetworkConfig(rank=8, alpha=8.0), seed=0)
    return unet, te, ms, samples, network


def ours(steps: int) -> float:
    unet, te, ms, samples, network = setup()

    def denoise(x_t, sigma, cond, **extra):
        return unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma), cond)

    trainer = Trainer(TrainConfig(max_steps=steps, batch_size=4, unet_lr=1e-4, save_every_epochs=0), network,
                      denoise, ms, samples, lambda caps: (te(caps), {}))
    t = time.perf_counter()
    trainer.run()
    return time.perf_counter() - t


def bare(steps: int) -> float:
    unet, te, ms, samples, network = setup()
    latents = torch.stack([s.latent for s in samples])  # (N, 4, 32, 32)
    with torch.no_grad():
        conds = te([s.caption for s in samples])  # (N, L, D), encoded once like the trainer's cache
    opt = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    with network.applied():
        for _ in range(steps):
            idx = torch.randint(0, len(samples), (4,), generator=g)
            x0, cond = latents[idx], conds[idx]
            noise = torch.randn(x0.shape, generator=g)
            sigma = torch.tensor([ms.percent_to_sigma(torch.rand((), generator=g).item() * 0.9998 + 1e-4)
                                  for _ in range(4)])
            x_t = x0 + noise * sigma.view(-1, 1, 1, 1)
            out = unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma), cond)
            loss = torch.nn.functional.mse_loss(out, noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ours(5), bare(5)  # warm up kernels and allocators
    t_ours, t_bare = [], []
    for _ in range(args.repeats):
        t_bare.append(bare(args.steps))
        t_ours.append(ours(args.steps))
    mo, mb = float(np.median(t_ours)), float(np.median(t_bare))
    print(f"bare loop: {args.steps / mb:.2f} steps/s ({mb:.2f} s); Trainer: {args.steps / mo:.2f} steps/s ({mo:.2f} s)")
    print(f"overhead: {100 * (mo / mb - 1):+.1f}% (goal <= 5%)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Atelier {__version__}, torch {torch.__version__}, "
          f"Python {platform.python_version()}")


if __name__ == "__main__":
    main()
