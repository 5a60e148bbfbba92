"""Gradient checkpointing changes memory, not maths."""

import torch

from tiny_models import TinyUNet

from atelier.trainers.memory import gradient_checkpointing
from atelier.trainers.network import LoRANetwork, NetworkConfig


def lora_grads(use_checkpointing: bool, dropout: float = 0.0):
    unet = TinyUNet(width=16)
    network = LoRANetwork({"lora_unet": unet}, NetworkConfig(rank=4, alpha=4.0, conv_rank=4, dropout=dropout))
    with torch.no_grad():
        for m in network.modules_by_key.values():
            m.up.weight.normal_(generator=torch.Generator().manual_seed(1))  # non-zero so every grad is non-trivial
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3.0, 700.0]), torch.randn(2, 6, 8, generator=g)
    blocks = [unet.input_blocks[0][0], unet.input_blocks[1][0], unet.out]
    with network.applied():
        if use_checkpointing:
            with gradient_checkpointing(blocks) as n:
                assert n == 2  # the conv_in leaf already carries the LoRA forward: left alone
                unet(x, t, c).pow(2).mean().backward()
        else:
            unet(x, t, c).pow(2).mean().backward()
    return [p.grad.clone() for p in network.parameters()], blocks


def test_checkpointed_gradients_equal_plain_gradients():
    plain, _ = lora_grads(False)
    checked, blocks = lora_grads(True)
    assert len(plain) == len(checked) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checked))
    assert all("forward" not in b.__dict__ for b in blocks)  # unwrapped afterwards


def test_no_checkpoint_without_grad():
    unet = TinyUNet()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([5.0]), torch.randn(1, 6, 8)
    with torch.no_grad(), gradient_checkpointing([unet.out]):
        assert torch.equal(unet(x, t, c), unet.forward(x, t, c))
