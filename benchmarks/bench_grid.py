"""B5: a 4 x 4 strength x seed grid — Atelier's XY Grid vs a chain of 16 stock LoraLoader + KSampler runs.

Both run on the same real ComfyUI server (started like the host tests, fixture SD1.5-shaped checkpoint, a random
LoRA over its UNet attention and first CLIP layers). Ours: one prompt with the XY Grid node (cells batched, LoRA at
forward time), the labelled grid drawn and saved. Peer: 16 prompts of CheckpointLoader → LoraLoader(strength) →
CLIPTextEncode → KSampler → VAEDecode → SaveImage, queued in strength-major order so ComfyUI's cache reuses the
LoraLoader and the encodes across seeds (the peer's best case). Timed from queueing to the last result, median
of --repeats. Images are compared cell by cell: strength 0 must equal the stock no-LoRA image up to float
summation order, the others up to the rounding of W x + s B A x vs (W + s B A) x.
Usage: python benchmarks/bench_grid.py [--size 128] [--steps 12] [--batch 16] [--repeats 3]
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_host import (FIXTURE_CHECKPOINT_NAME, ComfyServer, find_checkout, find_python,  # noqa: E402
                        fixture_checkpoint, random_lora)

STRENGTHS = (0.0, 0.5, 1.0, 1.5)
SEEDS = (1, 2, 3, 4)
LORA = "bench_rand.safetensors"


def stock_prompt(strength: float, seed: int, size: int, steps: int, prefix: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "9": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": LORA,
                                                     "strength_model": strength, "strength_clip": strength}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 1], "text": "x style, portrait"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["9", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def grid_prompt(size: int, steps: int, batch: int, name: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "AtelierXYGrid", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], positive="x style, portrait", negative="blurry",
            x_kind="strength", x_values=",".join(map(str, STRENGTHS)), y_kind="seed",
            y_values=",".join(map(str, SEEDS)), lora=LORA, strength=1.0, baseline="none", seed=1, steps=steps,
            cfg=5.0, sampler="euler", scheduler="normal", denoise=1.0, width=size, height=size, grid_name=name,
            batch_size=batch, resume=False)},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 2], "filename_prefix": name}},
    }


def pixels(server, info) -> np.ndarray:
    return np.asarray(Image.open(server.output_dir / info["subfolder"] / info["filename"]), dtype=np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    checkout, why = find_checkout()
    if checkout is None:
        sys.exit(f"no ComfyUI checkout: {why}")
    python = find_python(checkout)
    ckpt = fixture_checkpoint(checkout, python)
    server = ComfyServer(checkout, python, Path(tempfile.mkdtemp(prefix="atelier-b5-")))
    server.prepare(ckpt)
    random_lora(server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME, server.models / "loras" / LORA, seed=5)
    client = server.start()
    try:
        client.run(stock_prompt(0.25, 9, 64, 2, "warm"))  # loads the checkpoint, so neither side pays for it
        client.run(grid_prompt(64, 1, 2, "warm"))
        ours, peer, grid_out, stock_out = [], [], None, []
        for r in range(args.repeats):
            t = time.perf_counter()
            grid_out = client.run(grid_prompt(args.size, args.steps, args.batch, f"b5grid{r}"), timeout=3600)
            ours.append(time.perf_counter() - t)
            # A new strength set each repeat would be unfair to the peer's cache; a new seed offset keeps every
            # repeat's KSampler from being served from ComfyUI's cache while LoraLoader stays cached within it.
            ids = []
            t = time.perf_counter()
            for s in STRENGTHS:
                for seed in SEEDS:
                    prompt = stock_prompt(s + 1e-9 * r, seed, args.size, args.steps, f"b5stock{r}")
                    ids.append(client.queue(prompt))
            entries = [client.wait(i, timeout=3600) for i in ids]
            peer.append(time.perf_counter() - t)
            stock_out = [e["outputs"]["7"]["images"][0] for e in entries]
        cells = [pixels(server, i) for i in grid_out["3"]["images"]]  # seed-major (rows), strength (columns)
        stock = [pixels(server, i) for i in stock_out]  # strength-major
        diffs = {}
        for si, s in enumerate(STRENGTHS):
            for di, _ in enumerate(SEEDS):
                d = np.abs(cells[di * len(STRENGTHS) + si] - stock[si * len(SEEDS) + di])
                diffs.setdefault(s, []).append((int(d.max()), float(d.mean())))
    finally:
        server.stop()
    t_ours, t_peer = statistics.median(ours), statistics.median(peer)
    print(json.dumps({
        "size": args.size, "steps": args.steps, "batch": args.batch, "ours_s": round(t_ours, 2),
        "peer_s": round(t_peer, 2), "ratio": round(t_peer / t_ours, 2), "ours_runs": [round(x, 2) for x in ours],
        "peer_runs": [round(x, 2) for x in peer],
        "max_abs_diff_by_strength": {str(s): max(m for m, _ in v) for s, v in diffs.items()},
        "mean_abs_diff_by_strength": {str(s): round(max(m for _, m in v), 4) for s, v in diffs.items()},
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
