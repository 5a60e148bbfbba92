"""Every training option observed doing what it says, through the trainer's public contract only.

Each test watches what a real run hands to the denoiser (x_t, σ, the text conditioning, the forward's dtype), the
step reports (loss, lr) and the LoRA weights, and fails when its option is switched off
(benchmarks/mutate_options.py switches them off one at a time to check that).
"""

import math

import pytest
import torch

from tiny_models import TinyTextEncoder, TinyUNet

from atelier.trainers import objectives as ob
from atelier.trainers.loop import Callbacks, Trainer, TrainConfig, TrainSample
from atelier.trainers.memory import gradient_checkpointing
from atelier.trainers.network import LoRANetwork, NetworkConfig

TAGS = "korra, blue eyes, parka, snow, smile, wolf, mountains, night, aurora, boots"


def latent(seed=0, size=8):
    return torch.randn(4, size, size, generator=torch.Generator().manual_seed(seed))


class Run:
    """A tiny UNet (+ text encoder) with a LoRA; its denoiser and encoder record what the trainer feeds them."""

    def __init__(self, ms=None, te_lora=False, zero_gradient=False, **net):
        self.unet, self.te = TinyUNet(), TinyTextEncoder()
        self.ms = ms or ob.DiscreteEps()
        roots = {"lora_unet": self.unet, **({"lora_te": self.te} if te_lora else {})}
        self.network = LoRANetwork(roots, NetworkConfig(**{"rank": 4, "alpha": 4.0, **net}))
        self.zero_gradient = zero_gradient  # the output times 0: every gradient is exactly zero
        self.calls = []  # one dict per denoiser call: x_t, sigma, out, captions
        self.known = []  # every caption encoded so far; its index rides along in the conditioning
        self.weights = []  # the LoRA parameters after each step, when watch_weights is on

    def encode(self, captions):
        """The text encoder's (B, L, D) output plus one token carrying the caption's index (B, L + 1, D)."""
        ids = []
        for c in captions:
            if c not in self.known:
                self.known.append(c)
            ids.append(self.known.index(c))
        tag = torch.tensor(ids, dtype=torch.float32)[:, None, None].expand(-1, 1, 8) * 1e-2
        return torch.cat([self.te(captions), tag], dim=1), {}

    def denoise(self, x_t, sigma, cond, **extra):
        out = self.unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)
        if self.zero_gradient:
            out = out * 0.0
        self.calls.append({"x_t": x_t.detach().clone(), "sigma": sigma.detach().clone(),
                           "out": out.detach().float().clone(),
                           "captions": [self.known[round(v)] for v in (cond[:, -1, 0] * 100).tolist()]})
        return out

    def train(self, samples, watch_weights=False, **cfg):
        """Runs a trainer; returns (its StepInfo reports, the trainer)."""
        steps = []

        def on_step(info):
            steps.append(info)
            if watch_weights:
                self.weights.append([p.detach().clone() for p in self.network.parameters_for("lora_unet")])

        config = TrainConfig(**{"unet_lr": 1e-2, "epochs": 1, "save_every_epochs": 0, **cfg})
        trainer = Trainer(config, self.network, self.denoise, self.ms, samples, self.encode,
                          Callbacks(on_step=on_step))
        trainer.run()
        return steps, trainer

    def captions(self):
        return [c for call in self.calls for c in call["captions"]]

    def noise(self, x0):
        """The noise of each call, from x_t = α·x0 + β·noise (x0: the one latent every call trained on)."""
        out = []
        for call in self.calls:
            alpha, beta = ob.noise_coefficients(self.ms, call["sigma"])
            out.append((call["x_t"] - alpha * x0) / beta)
        return out


def lora(network, part="lora_up"):
    """The LoRA's kohya tensors whose key contains `part`, as float32 copies."""
    return {k: v for k, v in network.kohya_state_dict(torch.float32).items() if part in k}


# ------------------------------------------------------------------ data options


def test_random_flip_trains_on_the_mirrored_latent_about_half_the_time():
    x0 = latent(0)
    mirrored = x0.flip(-2)  # a stand-in for the mirrored image's own encoding, unlike x0 and x0 flipped
    for flipped_latent, expect in ((mirrored, mirrored), (None, x0.flip(-1))):
        run = Run()
        sample = TrainSample(latent=x0, caption="a", random_flip=True, flipped_latent=flipped_latent)
        run.train([sample], epochs=40, min_timestep_percent=0.97)  # little noise: x_t is close to x0
        used = [call["x_t"][0] for call in run.calls]
        is_mirror = [(x - expect).abs().mean() < (x - x0).abs().mean() for x in used]
        assert all(min((x - expect).abs().max(), (x - x0).abs().max()) < 1.0 for x in used)  # one or the other
        assert 12 <= sum(is_mirror) <= 28, f"{sum(is_mirror)} of 40 draws were mirrored; expected about half"
    plain = Run()
    plain.train([TrainSample(latent=x0, caption="a", flipped_latent=mirrored)], epochs=10, min_timestep_percent=0.97)
    assert all((call["x_t"][0] - x0).abs().max() < 1.0 for call in plain.calls)  # no random_flip: never mirrored


def test_caption_dropout_empties_about_that_share_of_captions():
    run = Run()
    samples = [TrainSample(latent=latent(i), caption=f"subject {i}, smile") for i in range(4)]
    run.train(samples, epochs=60, batch_size=4, caption_dropout=0.25)
    captions = run.captions()
    assert len(captions) == 240 and None not in captions
    empty = captions.count("")
    assert 0.15 * 240 <= empty <= 0.35 * 240, f"{empty} of 240 captions dropped; expected about 25 %"
    assert set(captions) - {""} == {s.caption for s in samples}  # the others arrive whole


def test_tag_dropout_drops_tags_after_keep_tokens_in_that_proportion():
    run = Run()
    run.train([TrainSample(latent=latent(), caption=TAGS)], epochs=80, tag_dropout=0.4, keep_tokens=2)
    tags = TAGS.split(", ")
    kept = [c.split(", ") for c in run.captions()]
    assert all(k[:2] == tags[:2] for k in kept)  # keep_tokens are never dropped
    assert all([t for t in tags[2:] if t in k] == k[2:] for k in kept)  # no shuffle: the rest keep their order
    share = 1 - sum(len(k) - 2 for k in kept) / (80 * 8)
    assert 0.3 <= share <= 0.5, f"{share:.0%} of the droppable tags were dropped; expected about 40 %"


def test_caption_shuffle_moves_every_tag_but_the_first_keep_tokens():
    run = Run()
    run.train([TrainSample(latent=latent(), caption=TAGS)], epochs=40, caption_shuffle=True, keep_tokens=3)
    tags = TAGS.split(", ")
    seen = [c.split(", ") for c in run.captions()]
    assert all(s[:3] == tags[:3] and sorted(s[3:]) == sorted(tags[3:]) for s in seen)
    assert len({tuple(s) for s in seen}) >= 35  # 7! orders: forty draws are nearly all different
    for position in range(3, len(tags)):  # every later tag turns up in several places
        assert len({s.index(tags[position]) for s in seen}) >= 4
    unshuffled = Run()
    unshuffled.train([TrainSample(latent=latent(), caption=TAGS)], epochs=3, keep_tokens=3)
    assert unshuffled.captions() == [TAGS] * 3


def test_prior_loss_weight_scales_the_sample_loss():
    losses = {}
    for weight in (1.0, 0.25):
        steps, _ = Run().train([TrainSample(latent=latent(), caption="a", loss_weight=weight)], max_steps=1)
        losses[weight] = steps[0].loss
    assert losses[0.25] == pytest.approx(0.25 * losses[1.0], rel=1e-6) and losses[1.0] > 0


# ------------------------------------------------------------------ objective options


def expected_first_loss(run, x0, kind="l2", delta=0.1, weight=None):
    """The first step's loss recomputed by hand from what the denoiser saw and returned."""
    call = run.calls[0]
    target = ob.prediction_target(run.ms, call["sigma"], call["x_t"], x0[None])
    diff = call["out"] - target
    if kind == "l2":
        per_element = diff ** 2
    elif kind == "l1":
        per_element = diff.abs()
    else:
        small = diff.abs() <= delta
        per_element = torch.where(small, 0.5 * diff ** 2, delta * (diff.abs() - 0.5 * delta))
    return per_element.mean().item() * (1.0 if weight is None else weight)


@pytest.mark.parametrize("kind, delta", [("l2", 0.1), ("l1", 0.1), ("huber", 0.1), ("huber", 0.7)])
def test_loss_kind_and_huber_delta_are_the_ones_asked_for(kind, delta):
    x0 = latent() * 3.0  # large errors, so L1, L2 and both Huber deltas all differ
    run = Run()
    steps, _ = run.train([TrainSample(latent=x0, caption="a")], max_steps=1, loss=kind, huber_delta=delta)
    assert steps[0].loss == pytest.approx(expected_first_loss(run, x0, kind, delta), rel=1e-5)
    others = [expected_first_loss(run, x0, k, d) for k, d in (("l2", 0.1), ("l1", 0.1), ("huber", 0.1),
                                                               ("huber", 0.7)) if (k, d) != (kind, delta)]
    assert all(abs(o - steps[0].loss) > 1e-3 * steps[0].loss for o in others)  # the check can tell them apart


@pytest.mark.parametrize("ms, snr_plus", [(ob.DiscreteEps(), 0.0), (ob.DiscreteV(), 1.0)])
def test_min_snr_weights_each_sample_by_min_snr_gamma_over_snr(ms, snr_plus):
    """Min-SNR-γ (Hang et al., 2023): ε-loss weight min(SNR, γ)/SNR, v-loss weight min(SNR, γ)/(SNR + 1)."""
    gamma, x0, weights = 2.0, latent(), []
    for low, high in ((0.0, 0.3), (0.9, 0.99)):  # high noise (SNR < γ) and low noise (SNR > γ)
        run = Run(ms=ms)
        steps, _ = run.train([TrainSample(latent=x0, caption="a")], max_steps=1, min_snr_gamma=gamma,
                             min_timestep_percent=low, max_timestep_percent=high)
        sigma = run.calls[0]["sigma"].item()
        snr = 1.0 / sigma ** 2  # x_t = x0 + σ·noise for both discrete families
        weight = min(snr, gamma) / (snr + snr_plus)
        assert steps[0].loss == pytest.approx(expected_first_loss(run, x0, weight=weight), rel=1e-4)
        weights.append(weight)
    assert max(abs(w - 1.0) for w in weights) > 0.05  # the weights really differ from "off" here


def test_timestep_range_bounds_every_sampled_sigma():
    ms, x0 = ob.DiscreteEps(), latent()
    run = Run(ms=ms)
    run.train([TrainSample(latent=x0, caption="a")], epochs=60, min_timestep_percent=0.3, max_timestep_percent=0.6)
    sigmas = torch.cat([call["sigma"] for call in run.calls])
    most, least = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.6)  # percent 0 is the most noise
    assert sigmas.max() <= most * 1.0001 and sigmas.min() >= least * 0.9999
    assert sigmas.max() > 0.8 * most and sigmas.min() < 1.25 * least  # the draws span the range
    full = Run(ms=ms)
    full.train([TrainSample(latent=x0, caption="a")], epochs=60)
    every = torch.cat([call["sigma"] for call in full.calls])
    assert every.max() > 2 * most and every.min() < 0.5 * least  # without the range they go beyond it


def test_noise_offset_adds_one_constant_per_channel_to_the_noise():
    x0 = latent()
    noises = {}
    for offset in (0.0, 0.5):
        run = Run()
        run.train([TrainSample(latent=x0, caption="a")], epochs=4, noise_offset=offset, max_timestep_percent=0.5)
        noises[offset] = run.noise(x0)
    for plain, shifted in zip(noises[0.0], noises[0.5]):
        shift = shifted[0] - plain[0]  # (C, H, W): the same per-sample noise plus offset × a channel constant
        per_channel = shift.mean(dim=(1, 2))
        assert torch.allclose(shift, per_channel[:, None, None].expand_as(shift), atol=1e-3)
        assert per_channel.abs().max() > 0.05


# ------------------------------------------------------------------ optimisation options


def test_max_grad_norm_bounds_the_first_sgd_step():
    x0, lr = latent() * 3.0, 1.0
    moved = {}
    for norm in (1e-4, 0.0):
        run = Run()
        before = lora(run.network)
        run.train([TrainSample(latent=x0, caption="a")], max_steps=1, optimizer="sgd", weight_decay=0.0,
                  unet_lr=lr, max_grad_norm=norm)
        after = lora(run.network)
        # SGD's first step (momentum buffer = gradient) moves the weights by lr × gradient
        moved[norm] = math.sqrt(sum(((after[k] - before[k]) ** 2).sum().item() for k in before))
    assert moved[1e-4] <= lr * 1e-4 * 1.001
    assert moved[0.0] > 10 * lr * 1e-4  # unclipped, the same gradient is far larger: the bound did the work


def test_weight_decay_shrinks_the_weights_by_lr_times_decay_with_every_optimizer():
    for name in ("adamw", "adafactor", "lion", "sgd"):
        run = Run(zero_gradient=True)  # no gradient: only the decay moves a weight
        before = lora(run.network, "lora_down")
        run.train([TrainSample(latent=latent(), caption="a")], max_steps=1, optimizer=name, unet_lr=0.1,
                  weight_decay=0.5)
        after = lora(run.network, "lora_down")
        assert all(torch.allclose(after[k], before[k] * (1 - 0.1 * 0.5), rtol=1e-5, atol=0) for k in before), name


def test_optimizer_choice_changes_the_update_rule():
    """AdamW and Lion move every weight with a gradient by about lr on the first step; SGD by lr × its gradient."""
    steps = {}
    for name in ("adamw", "lion", "sgd"):
        run = Run()
        before = lora(run.network)
        run.train([TrainSample(latent=latent() * 3.0, caption="a")], max_steps=1, optimizer=name, weight_decay=0.0,
                  unet_lr=1e-3, max_grad_norm=0.0)
        after = lora(run.network)
        delta = torch.cat([(after[k] - before[k]).flatten() for k in before]).abs()
        steps[name] = delta[delta > 0]
    assert steps["lion"].min() == pytest.approx(1e-3, rel=1e-3) and steps["lion"].max() == pytest.approx(1e-3, rel=1e-3)
    assert steps["adamw"].max() == pytest.approx(1e-3, rel=1e-3)
    assert steps["sgd"].max() / steps["sgd"].min() > 10  # proportional to gradients of many sizes


def test_text_encoder_and_unet_learn_at_their_own_rates():
    """AdamW's first step moves each weight with a gradient by its group's lr: te_lr for the text encoder."""
    run = Run(te_lora=True)
    before = lora(run.network)
    run.train([TrainSample(latent=latent() * 3.0, caption=TAGS)], max_steps=1, train_text_encoder=True,
              unet_lr=1e-2, te_lr=1e-3, weight_decay=0.0, max_grad_norm=0.0)
    after = lora(run.network)
    moved = {part: max((after[k] - before[k]).abs().max().item() for k in before if part in k)
             for part in ("lora_unet", "lora_te")}
    assert moved["lora_unet"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["lora_te"] == pytest.approx(1e-3, rel=1e-3)
    frozen = Run(te_lora=True)
    before = lora(frozen.network)
    frozen.train([TrainSample(latent=latent() * 3.0, caption=TAGS)], max_steps=1, te_lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in lora(frozen.network).items() if "lora_te" in k)


@pytest.mark.parametrize("scheduler, extra, multipliers", [
    ("constant", {"warmup_steps": 3}, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
    ("linear", {}, [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    ("linear", {"warmup_steps": 2}, [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", {}, [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
    ("cosine_with_restarts", {"num_cycles": 2}, [0.5 * (1 + math.cos(math.pi * (k % 3) / 3)) for k in range(6)]),
    ("polynomial", {"power": 2.0}, [(1 - k / 6) ** 2 for k in range(6)]),
])
def test_each_step_runs_at_the_scheduled_learning_rate(scheduler, extra, multipliers):
    steps, _ = Run().train([TrainSample(latent=latent(), caption="a")], max_steps=6, unet_lr=0.01,
                           scheduler=scheduler, **extra)
    assert [s.lr for s in steps] == pytest.approx([0.01 * m for m in multipliers], rel=1e-9)


def test_ema_follows_the_trained_weights_by_the_warmed_up_decay():
    """The shipped average: shadow ← d·shadow + (1 − d)·weights after each step, d = min(decay, (1 + n)/(10 + n))."""
    run = Run()
    shadow = [p.detach().clone() for p in run.network.parameters_for("lora_unet")]
    _, trainer = run.train([TrainSample(latent=latent() * 3.0, caption="a")], watch_weights=True, max_steps=6,
                           ema_decay=0.2)
    for n, weights in enumerate(run.weights):
        d = min(0.2, (1 + n) / (10 + n))
        shadow = [d * s + (1 - d) * w for s, w in zip(shadow, weights)]
    ema = list(trainer.ema.state_tensors().values())
    assert len(run.weights) == 6 and len(ema) == len(shadow)
    assert all(torch.allclose(e, s, atol=1e-7) for e, s in zip(ema, shadow))
    assert not all(torch.allclose(e, w, atol=1e-6) for e, w in zip(ema, run.weights[-1]))  # an average, not a copy


def test_gradient_checkpointing_recomputes_blocks_and_keeps_less_for_backward():
    counts = {}
    for checkpointing in (False, True):
        run = Run()
        block = run.unet.input_blocks[1][0]
        forwards, saved = [0], [0]
        hook = block.attn1.register_forward_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                gradient_checkpointing([block, run.unet.out] if checkpointing else []):
            run.train([TrainSample(latent=latent(), caption="a")], max_steps=2)
        hook.remove()
        counts[checkpointing] = forwards[0], saved[0]
    assert counts[False][0] == 2 and counts[True][0] == 4  # each step's forward runs again during backward
    assert counts[True][1] < 0.5 * counts[False][1], f"saved for backward: {counts}"


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_precision_runs_the_forward_in_that_dtype(precision, dtype):
    run = Run()
    seen = []
    hook = run.unet.input_blocks[1][0].attn2.to_q.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    run.train([TrainSample(latent=latent(), caption="a")], max_steps=2, precision=precision)
    hook.remove()
    assert seen == [dtype, dtype]
