"""B (GPU-ready): LoRA training peak memory and speed with per-block checkpointing and with block swap.

The model is a stack of DiT-style transformer blocks (LayerNorm, fused QKV attention, GELU MLP of 4x width) at a real
width (Flux.1's 3072 by default), frozen in bf16 on the device, with a rank-16 Atelier LoRA (trainers.network) on every
Linear, trained with AdamW on random tokens. Variants, each in its own child process: plain, gradient checkpointing of
every block (trainers.memory.gradient_checkpointing), and block swap of N blocks (trainers.memory.block_swap, the code
Train LoRA Advanced's blocks_to_swap runs), which keeps those blocks' weights in pinned CPU memory.
Peer: checkpointing alone, the best the trainer did before block swap; the ratio is swap's peak / checkpointing's.
On a GPU the figure is torch.cuda.max_memory_allocated during training; on the CPU (a smoke run) it is the model's
resident parameter bytes at their peak, which is all a CPU can show (there the offload device is the device).
Usage: python benchmarks/block_swap_memory.py --device cuda [--width 3072 --depth 19 --tokens 4096 --swap 15]
       python benchmarks/block_swap_memory.py   (CPU smoke run: width 256, 6 blocks, 64 tokens; swap defaults to 3/4)
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(width: int, depth: int, device: str):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.heads = max(1, width // 128)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, width)
            x = x + self.proj(a)
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(depth))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return Stack().to(device=device, dtype=dtype).requires_grad_(False), dtype


def child(variant: str, width: int, depth: int, tokens: int, swap: int, steps: int, device: str) -> None:
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import conftest  # noqa: F401  registers this checkout as the package `atelier`

    from atelier.trainers.memory import block_swap, gradient_checkpointing, resident_bytes
    from atelier.trainers.network import LoRANetwork, NetworkConfig

    torch.manual_seed(0)
    model, dtype = build(width, depth, device)
    net = LoRANetwork({"lora_unet": model}, NetworkConfig(rank=16, alpha=16.0, target_patterns=(r"blocks",)))
    net.to(device)
    net.apply()
    opt = torch.optim.AdamW(list(net.parameters()), lr=1e-4)
    x = torch.randn(1, tokens, width, device=device, dtype=dtype)
    blocks = list(model.blocks)
    cuda = device.startswith("cuda")
    weights = resident_bytes(model)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    swapped = blocks[depth - swap:] if variant == "swap" else []
    with block_swap(swapped, device, "cpu", measure=model) as swapper, \
            gradient_checkpointing(blocks if variant != "plain" else []):
        start = time.perf_counter()
        for _ in range(steps):
            loss = model(x).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        peak = torch.cuda.max_memory_allocated() if cuda else (swapper.peak_bytes if swapped else weights)
    out = {"variant": variant, "s_per_step": seconds, "peak_mib": peak / 2**20, "weights_mib": weights / 2**20,
           "swapped_mib": swapper.swapped_bytes / 2**20, "lora_params": sum(p.numel() for p in net.parameters()),
           "loss_finite": bool(torch.isfinite(loss))}
    if cuda:
        out["device"] = torch.cuda.get_device_name()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (smoke run), or cuda on a lent GPU machine")
    parser.add_argument("--width", type=int, help="hidden width (Flux.1: 3072)")
    parser.add_argument("--depth", type=int, help="blocks (Flux.1 has 19 double + 38 single)")
    parser.add_argument("--tokens", type=int, help="image tokens per sample (1024² in Flux.1: 4096)")
    parser.add_argument("--swap", type=int, help="blocks_to_swap")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=("plain", "checkpointed", "swap"))
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    width, depth = args.width or (3072 if cuda else 256), args.depth or (19 if cuda else 6)
    tokens, swap = args.tokens or (4096 if cuda else 64), args.swap if args.swap is not None else depth - depth // 4
    if args.child:
        child(args.child, width, depth, tokens, swap, args.steps, args.device)
        return
    rows = {}
    for variant in ("plain", "checkpointed", "swap"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--device", args.device,
                              "--width", str(width), "--depth", str(depth), "--tokens", str(tokens),
                              "--swap", str(swap), "--steps", str(args.steps)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        if out.returncode:
            rows[variant] = {"variant": variant, "error": out.stderr.strip().splitlines()[-1][:300]}
            continue
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"LoRA rank 16 on {depth} DiT blocks of width {width}, {tokens} tokens, {args.steps} steps, "
          f"{rows['plain'].get('device', args.device)}, {platform.processor() or platform.machine()}")
    for r in rows.values():
        if "error" in r:
            print(f"  {r['variant']:12}  failed: {r['error']}")
            continue
        print(f"  {r['variant']:12}  {r['s_per_step']:.3f} s/step  peak {r['peak_mib']:.0f} MiB "
              f"(weights {r['weights_mib']:.0f} MiB, {r['swapped_mib']:.0f} MiB kept on the CPU)")
    if "error" not in rows["swap"] and "error" not in rows["checkpointed"]:
        ratio = rows["swap"]["peak_mib"] / rows["checkpointed"]["peak_mib"]
        slower = rows["swap"]["s_per_step"] / rows["checkpointed"]["s_per_step"]
        print(f"block swap of {swap}/{depth} blocks: peak {ratio:.2f}x of checkpointing alone, {slower:.2f}x its time "
              "per step")


if __name__ == "__main__":
    main()
