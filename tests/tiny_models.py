"""Tiny real torch models with the shapes of the real thing, for trainer tests and benchmarks.

TinyUNet: conv in → time embedding → self- and cross-attention (Linear q/k/v/out, like SD's transformer blocks) →
conv → conv out; called as unet(x, timesteps, context). TinyTextEncoder: words hashed to token ids → embedding →
one Linear + LayerNorm; encode(captions) -> (B, L, D). Names nest like ComfyUI's (`input_blocks.0.0`, ...).
"""

import zlib

import torch
from torch import nn

from atelier.trainers.objectives import sinusoidal_embedding


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x, context):
        b, n, d = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        split = lambda t: t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d/h)
        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(4, dim)
        self.attn1 = CrossAttention(dim, dim)
        self.attn2 = CrossAttention(dim, context_dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, h, context):
        b, c, hh, ww = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = tokens + self.attn1(tokens, tokens)
        tokens = tokens + self.attn2(tokens, context)
        h = h + tokens.transpose(1, 2).reshape(b, c, hh, ww)
        return h + self.conv(torch.nn.functional.silu(h))


class TinyUNet(nn.Module):
    def __init__(self, channels: int = 4, width: int = 16, context_dim: int = 8, seed: int = 0):
        super().__init__()
        self.width = width
        self.time_embed = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(channels, width, 3, padding=1)]),
                                           nn.ModuleList([Block(width, context_dim)])])
        self.out = nn.Sequential(nn.GroupNorm(4, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():  # deterministic init from a local generator
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.02))

    def forward(self, x, timesteps, context):
        temb = self.time_embed(sinusoidal_embedding(timesteps, self.width))  # (B, W)
        h = self.input_blocks[0][0](x) + temb[:, :, None, None]
        h = self.input_blocks[1][0](h, context)
        return self.out(h)


class TinyTextEncoder(nn.Module):
    def __init__(self, dim: int = 8, vocab: int = 97, length: int = 6, seed: int = 1):
        super().__init__()
        self.vocab, self.length = vocab, length
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def tokens(self, captions: list[str]) -> torch.Tensor:
        ids = []
        for c in captions:
            words = [zlib.crc32(w.encode()) % (self.vocab - 1) + 1 for w in c.replace(",", " ").split()]
            ids.append((words + [0] * self.length)[: self.length])  # 0 = padding
        return torch.tensor(ids)

    def forward(self, captions: list[str]) -> torch.Tensor:
        h = self.embed(self.tokens(captions))  # (B, L, D)
        return self.norm(h + self.proj(h))
