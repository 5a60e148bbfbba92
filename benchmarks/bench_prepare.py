"""B0 (CPU): dataset preparation throughput — Atelier's pipeline vs a straightforward single-process PIL loop.

Both sides do the same work per image: decode a 768² RGBA PNG, composite alpha onto white, centre-crop, resize to
512² (Lanczos), perceptual-hash the result. The peer is the loop most training scripts contain; ours is
core.prepare.prepare_stream (thread pool, reduce-then-Lanczos). Both run in this one process, one after the
other, on the same files; the script checks they produce the same hashes (within resampling tolerance) and prints
the ratio. Usage: python benchmarks/bench_prepare.py [--images 2000] [--size 768] [--workers N]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  registers this checkout as the package `atelier`

from atelier.core import __version__  # noqa: E402
from atelier.core.dataset import Preparation, scan_folder, with_preparation  # noqa: E402
from atelier.core.dedupe import hamming, phash  # noqa: E402
from atelier.core.prepare import prepare_sample, prepare_stream  # noqa: E402


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Smooth RGBA images with a transparent margin, like renders with alpha (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        a, b, c = rng.random(3)
        rgb = np.stack([np.sin(6 * xx * a + i) , np.cos(5 * yy * b), np.sin(4 * (xx + yy) * c)], -1) * 127 + 128
        alpha = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16).astype(np.float32) * 255
        arr = np.concatenate([rgb, alpha[..., None]], -1).astype(np.uint8)
        Image.fromarray(arr, "RGBA").save(folder / f"img_{i:05d}.png", compress_level=1)


def peer_loop(paths: list[Path], size: int) -> list[int]:
    """The straightforward loop: open, RGBA, composite on white, centre crop, Lanczos resize, hash."""
    hashes = []
    for path in paths:
        img = Image.open(path).convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                             Image.LANCZOS)
        hashes.append(phash(img))
    return hashes


def ours(folder: Path, size: int, workers: int | None) -> list[int]:
    dataset = with_preparation(scan_folder(folder, caption_source="fixed"), Preparation("crop", size, size))
    out = [None] * len(dataset.samples())
    for p in prepare_stream(dataset.samples(), dataset.memory, workers=workers,
                            transform=lambda s, m: phash(prepare_sample(s, m))):
        assert p.skipped is None, p.skipped
        out[p.index] = p.image
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--target", type=int, default=512)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        make_images(folder, args.images, args.size)
        print(f"generated {args.images} {args.size}² RGBA PNGs in {time.perf_counter() - t:.1f} s")
        paths = sorted(folder.glob("*.png"))
        ours(folder, args.target, args.workers)  # warm the page cache for both sides equally
        t = time.perf_counter()
        peer = peer_loop(paths, args.target)
        t_peer = time.perf_counter() - t
        t = time.perf_counter()
        mine = ours(folder, args.target, args.workers)
        t_ours = time.perf_counter() - t
    dist = [hamming(a, b) for a, b in zip(peer, mine)]
    print(f"hash agreement: mean Hamming distance {np.mean(dist):.2f}, max {max(dist)} (of 64 bits)")
    rate_peer, rate_ours = args.images / t_peer, args.images / t_ours
    print(f"peer (single-process PIL loop): {t_peer:.1f} s, {rate_peer:.1f} img/s")
    print(f"ours (core.prepare):            {t_ours:.1f} s, {rate_ours:.1f} img/s")
    print(f"ratio: {t_peer / t_ours:.2f}x  (goal >= 1.5x)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Atelier {__version__}, "
          f"torch {torch.__version__}, Pillow {Image.__version__}, numpy {np.__version__}, Python "
          f"{platform.python_version()}")
    if max(dist) > 8:
        sys.exit("outputs differ beyond resampling tolerance")


if __name__ == "__main__":
    main()
