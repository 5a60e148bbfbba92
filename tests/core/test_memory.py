"""Gradient checkpointing changes memory, not maths."""

import pytest
import torch

from tiny_models import TinyUNet

from atelier.trainers.memory import gradient_checkpointing, resident_bytes
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


def swap_grads(swap_blocks, dropout: float = 0.1):
    """LoRA gradients of one step (with dropout, so recomputation must replay masks) and the BlockSwap used."""
    from atelier.trainers.memory import block_swap

    unet = TinyUNet(width=16)
    for p in unet.parameters():
        p.requires_grad_(False)  # frozen base, as training leaves it
    network = LoRANetwork({"lora_unet": unet}, NetworkConfig(rank=4, alpha=4.0, conv_rank=4, dropout=dropout))
    with torch.no_grad():
        for m in network.modules_by_key.values():
            m.up.weight.normal_(generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3.0, 700.0]), torch.randn(2, 6, 8, generator=g)
    before = resident_bytes(unet)
    with network.applied(), block_swap(swap_blocks(unet), "cpu", "cpu", measure=unet) as swap:
        network.train()
        during = resident_bytes(unet)
        unet(x, t, c).pow(2).mean().backward()
    assert resident_bytes(unet) == before  # every weight back afterwards
    return [p.grad.clone() for p in network.parameters()], swap, before, during


def test_block_swap_gives_the_same_gradients_and_holds_one_block_at_a_time():
    plain, _, _, _ = swap_grads(lambda u: [])
    blocks = lambda u: [u.input_blocks[1][0], u.out]
    swapped, swap, before, during = swap_grads(blocks)
    assert len(plain) == len(swapped) and all(torch.equal(a, b) for a, b in zip(plain, swapped))
    unet = TinyUNet(width=16)
    sizes = [sum(p.nbytes for p in b.parameters()) for b in blocks(unet)]
    assert swap.swapped_bytes == sum(sizes) and during == before - sum(sizes)
    assert swap.loads == 4  # each block loaded for its forward and again for its recomputation in backward
    assert swap.peak_bytes == during + max(sizes)  # never two swapped blocks resident at once


def test_block_swap_without_grad_and_an_already_wrapped_block():
    from atelier.trainers.memory import block_swap

    unet = TinyUNet().requires_grad_(False)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([5.0]), torch.randn(1, 6, 8)
    expected = unet(x, t, c)
    unet.out.forward = unet.out.forward  # someone else's instance forward: not swapped
    with torch.no_grad(), block_swap([unet.input_blocks[1][0], unet.out], "cpu", "cpu", measure=unet) as swap:
        assert [len(v) for v in swap.stores.values()] == [len(list(unet.input_blocks[1][0].parameters()))]
        assert torch.equal(unet(x, t, c), expected) and swap.loads == 1
    assert "forward" not in unet.input_blocks[1][0].__dict__


def test_block_swap_of_nothing_is_nothing():
    from atelier.trainers.memory import block_swap

    unet = TinyUNet()
    with block_swap([], "cpu", "cpu") as swap:
        assert swap.blocks == [] and resident_bytes(unet) == sum(p.nbytes for p in unet.parameters())


def test_a_failure_halfway_through_the_offload_puts_every_moved_weight_back():
    from atelier.trainers.memory import BlockSwap, block_swap

    unet = TinyUNet().requires_grad_(False)
    before = {n: p.clone() for n, p in unet.named_parameters()}
    real, calls = BlockSwap.frozen, []

    def failing(block):
        calls.append(block)
        if len(calls) == 2:  # the second block fails after the first was emptied (e.g. pinning runs out)
            raise RuntimeError("pinned memory exhausted")
        return real(block)
    BlockSwap.frozen = staticmethod(failing)
    try:
        with pytest.raises(RuntimeError, match="pinned memory exhausted"):
            with block_swap([unet.input_blocks[1][0], unet.out], "cpu", "cpu"):
                pass
    finally:
        BlockSwap.frozen = staticmethod(real)
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())  # nothing left emptied


def test_a_weight_tied_to_a_layer_outside_the_swapped_blocks_stays_resident():
    from atelier.trainers.memory import block_swap

    unet = TinyUNet().requires_grad_(False)
    inner = unet.out[2]
    unet.tied = torch.nn.Conv2d(16, 4, 3, padding=1).requires_grad_(False)
    unet.tied.weight = inner.weight  # the same Parameter in a layer the swap does not cover
    x = torch.randn(1, 16, 4, 4)
    expected = unet.tied(x)
    others = sum(p.nbytes for n, p in unet.out.named_parameters() if n != "2.weight")
    with torch.no_grad(), block_swap([unet.out], "cpu", "cpu", root=unet) as swap:
        assert torch.equal(unet.tied(x), expected)  # still usable while the block is swapped out
        assert inner.weight.numel() > 0 and swap.swapped_bytes == others > 0
