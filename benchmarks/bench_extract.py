"""B4 (CPU): LoRA extraction at rank 64 — randomized SVD (ours) vs a full SVD per layer (the kohya / ComfyUI method).

The pair is SD1.5-shaped: the 160 LoRA-targeted layers of SD1.5's 16 transformer blocks at their real shapes
(proj_in/out, attn1/attn2 q k v out, GEGLU ff), each difference built with a power-law spectrum plus noise, like a
fine-tune's. Both methods extract every layer at rank 64 in this one process; we report the time ratio and the ratio
of total reconstruction errors (||ΔW − ΔW_r||_F summed in quadrature over layers).
Usage: python benchmarks/bench_extract.py [--rank 64] [--layers 160]
"""

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  registers this checkout as the package `atelier`

from atelier.core import __version__  # noqa: E402
from atelier.core.lora_math import extract_module  # noqa: E402


def sd15_transformer_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, weight shape) of the layers kohya's LoRA targets in SD1.5's UNet transformer blocks."""
    dims = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
    out = []
    for b, d in enumerate(dims):
        p = f"block{b}"
        out += [(f"{p}.proj_in", (d, d, 1, 1)), (f"{p}.proj_out", (d, d, 1, 1))]
        out += [(f"{p}.attn1.{n}", (d, d)) for n in ("to_q", "to_k", "to_v", "to_out")]
        out += [(f"{p}.attn2.to_q", (d, d)), (f"{p}.attn2.to_k", (d, 768)), (f"{p}.attn2.to_v", (d, 768)),
                (f"{p}.attn2.to_out", (d, d))]
        out += [(f"{p}.ff.proj", (8 * d, d)), (f"{p}.ff.out", (d, 4 * d))]
    return out


def make_diff(shape, g: torch.Generator, k: int = 192) -> torch.Tensor:
    """A fine-tune-like difference: singular values decaying as i^-1, plus small dense noise."""
    m, n = shape[0], math.prod(shape[1:])
    k = min(k, m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    s = 1e-2 / torch.arange(1, k + 1, dtype=torch.float32)
    diff = (u * s) @ v.T + 1e-5 * torch.randn(m, n, generator=g)
    return diff.reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    g = torch.Generator().manual_seed(0)
    layers = [(name, make_diff(shape, g)) for name, shape in sd15_transformer_shapes()[: args.layers]]
    totals = {}
    for method in ("full", "randomized"):
        err2 = norm2 = 0.0
        t = time.perf_counter()
        for _, diff in layers:
            module, report = extract_module(diff, args.rank, method=method, generator=torch.Generator().manual_seed(1))
            d2 = float(diff.float().pow(2).sum())
            err2 += (report["error"] ** 2) * d2
            norm2 += d2
        totals[method] = (time.perf_counter() - t, math.sqrt(err2 / norm2))
    (tf, ef), (tr, er) = totals["full"], totals["randomized"]
    print(f"{len(layers)} layers, rank {args.rank}")
    print(f"full SVD per layer:  {tf:.1f} s, relative error {ef:.5f}")
    print(f"randomized SVD:      {tr:.1f} s, relative error {er:.5f}")
    print(f"time ratio {tf / tr:.1f}x (goal >= 10x); error ratio {er / ef:.4f} (goal <= 1.05)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Atelier {__version__}, torch {torch.__version__}, "
          f"Python {platform.python_version()}")


if __name__ == "__main__":
    main()
