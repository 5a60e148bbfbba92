"""Objectives from the model sampling: each family's target and weight checked against a hand computation."""

import pytest
import torch

from atelier.trainers import objectives as ob


def sample(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 5, 5, generator=g), torch.randn(b, 4, 5, 5, generator=g)


SIGMAS = torch.tensor([0.05, 1.0, 14.6])


def test_eps_target_is_the_noise():
    x0, noise = sample()
    ms = ob.DiscreteEps()
    x_t = ms.noise_scaling(SIGMAS, noise, x0)
    assert torch.allclose(x_t, x0 + SIGMAS.view(3, 1, 1, 1) * noise)
    assert torch.allclose(ob.prediction_target(ms, SIGMAS, x_t, x0), noise, atol=1e-5)


def test_v_target_is_velocity():
    x0, noise = sample(1)
    ms = ob.DiscreteV()
    x_t = ms.noise_scaling(SIGMAS, noise, x0)
    s = SIGMAS.view(3, 1, 1, 1)
    alpha_t, sigma_t = 1 / (1 + s ** 2) ** 0.5, s / (1 + s ** 2) ** 0.5  # VP coefficients of the scaled input
    v = alpha_t * noise - sigma_t * x0  # Salimans & Ho's velocity
    assert torch.allclose(ob.prediction_target(ms, SIGMAS, x_t, x0), v, atol=1e-5)
    assert torch.allclose(ms.calculate_denoised(SIGMAS, v, x_t), x0, atol=1e-5)


def test_flow_target_is_noise_minus_x0():
    x0, noise = sample(2)
    ms = ob.RectifiedFlow(shift=3.0)
    sig = torch.tensor([0.1, 0.5, 0.9])
    x_t = ms.noise_scaling(sig, noise, x0)
    assert torch.allclose(x_t, (1 - sig.view(3, 1, 1, 1)) * x0 + sig.view(3, 1, 1, 1) * noise)
    assert torch.allclose(ob.prediction_target(ms, sig, x_t, x0), noise - x0, atol=1e-5)


def test_min_snr_matches_kohya_forms():
    gamma = 5.0
    snr_eps = 1 / SIGMAS ** 2
    expected_eps = torch.clamp(snr_eps, max=gamma) / snr_eps
    assert torch.allclose(ob.snr(ob.DiscreteEps(), SIGMAS), snr_eps, rtol=1e-5)
    assert torch.allclose(ob.min_snr_weights(ob.DiscreteEps(), SIGMAS, gamma), expected_eps, rtol=1e-5)
    expected_v = torch.clamp(snr_eps, max=gamma) / (snr_eps + 1)
    assert torch.allclose(ob.min_snr_weights(ob.DiscreteV(), SIGMAS, gamma), expected_v, rtol=1e-5)


def test_sigma_sampling_is_deterministic_and_in_range():
    ms = ob.DiscreteEps()
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(64)]
    a, b = ob.sample_sigmas(ms, gens()), ob.sample_sigmas(ms, gens())
    assert torch.equal(a, b)
    assert a.min() >= ms.sigmas[0] * 0.999 and a.max() <= ms.sigmas[-1] * 1.001
    narrow = ob.sample_sigmas(ms, gens(), min_percent=0.9, max_percent=1.0)  # low-noise end only
    assert narrow.max() < ms.sigmas[120]


def test_offset_noise_adds_a_channel_constant():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = torch.randn((4, 8, 8), generator=g1)
    shifted = ob.offset_noise((4, 8, 8), g2, 0.1)
    diff = shifted - plain
    assert torch.allclose(diff, diff[:, :1, :1].expand_as(diff)) and diff.abs().max() > 0


def test_losses_and_bad_name():
    p, t = torch.tensor([0.0, 1.0, 3.0]), torch.zeros(3)
    assert torch.equal(ob.elementwise_loss(p, t, "l2"), torch.tensor([0.0, 1.0, 9.0]))
    assert torch.equal(ob.elementwise_loss(p, t, "l1"), torch.tensor([0.0, 1.0, 3.0]))
    assert torch.allclose(ob.elementwise_loss(p, t, "huber", 1.0), torch.tensor([0.0, 0.5, 2.5]))
    with pytest.raises(ValueError, match="l2, l1, huber"):
        ob.elementwise_loss(p, t, "mse")


def test_video_latents_five_d_flow_target_noise_offset_and_loss():
    """(B, C, T, H, W) latents (Wan, Qwen-Image): per-sample coefficients broadcast over frames, one loss per sample."""
    g = torch.Generator().manual_seed(0)
    ms = ob.RectifiedFlow(shift=3.0)
    x0, noise = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    sigma = torch.tensor([0.2, 0.9])
    x_t = ms.noise_scaling(sigma, noise, x0)
    assert torch.allclose(ob.prediction_target(ms, sigma, x_t, x0), noise - x0, atol=1e-5)
    n = ob.offset_noise((3, 4, 5, 5), torch.Generator().manual_seed(1), 0.5)
    assert n.shape == (3, 4, 5, 5)
    batch = ob.NoisedBatch(x0=x0, noise=noise, sigma=sigma, x_t=x_t, cond=torch.zeros(2, 1, 1))
    loss = ob.DenoisingLoss()(lambda x, s, c: noise - x0, ms, batch)
    assert loss.shape == (2,) and float(loss.abs().max()) < 1e-8
