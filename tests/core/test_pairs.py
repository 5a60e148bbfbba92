"""Before/after pairs: matching rules, problems listed and skipped, the pair slider objective and what it learns."""

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TinyTextEncoder, TinyUNet

from atelier.core import dataset as ds
from atelier.core.pairs import load_pairs
from atelier.trainers import objectives as ob
from atelier.trainers.data import build_samples
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample
from atelier.trainers.network import LoRANetwork, NetworkConfig
from atelier.trainers.pair_objective import PairSliderLoss


def write(folder, name, size=(16, 16), value=100):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(folder / name)


def scan(folder):
    return ds.scan_folder(folder, caption_source="fixed", fixed_caption="elf").subsets[0]


def test_same_name_pairs_list_missing_partners_and_size_mismatches(tmp_path):
    for name in ("a.png", "b.png", "only_before.png", "big.png"):
        write(tmp_path / "before", name, (32, 16) if name == "big.png" else (16, 16))
    for name in ("a.png", "b.png", "only_after.png", "big.png"):
        write(tmp_path / "after", name, value=200)
    data, problems = load_pairs(scan(tmp_path / "before"), scan(tmp_path / "after"))
    assert [tuple(p.split("/")[-1] for p in pair) for pair in data.pairs] == [("a.png", "a.png"), ("b.png", "b.png")]
    assert [s.role for s in data.subsets] == ["train", "before"]
    assert problems == ["big.png: 16×16 but its partner big.png is 32×16; a pair must have the same size (resize one)",
                        "only_after.png: no 'before' image named only_after.*; add it or remove this image",
                        "only_before.png: no 'after' image named only_before.*; add it or remove this image"]
    assert [s.path for s in data.skipped] == ["big.png", "only_after.png", "only_before.png"]


def test_suffix_rule_pairs_within_one_folder(tmp_path):
    for name in ("a.png", "a_after.png", "b.png", "c_after.png"):
        write(tmp_path / "one", name)
    data, problems = load_pairs(scan(tmp_path / "one"), None, rule="suffix", suffix="_after")
    assert [tuple(p.split("/")[-1] for p in pair) for pair in data.pairs] == [("a_after.png", "a.png")]
    assert problems == ["c_after.png: no 'before' image named c.*; add it or remove this image",
                        "b.png: no 'after' image named b_after.*; add it or remove this image"]


def test_no_pair_left_is_an_error_listing_the_first_problems(tmp_path):
    write(tmp_path / "before", "x.png")
    write(tmp_path / "after", "y.png")
    with pytest.raises(ds.DatasetError, match=r"No before/after pair found among 2 image\(s\): y.png: no 'before' "
                                              r"image named y.*x.png: no 'after' image.*same file name"):
        load_pairs(scan(tmp_path / "before"), scan(tmp_path / "after"))
    with pytest.raises(ds.DatasetError, match="Unknown pair rule 'zip'; expected one of same_name, suffix"):
        load_pairs(scan(tmp_path / "before"), None, rule="zip")
    with pytest.raises(ds.DatasetError, match="same_name rule needs two folders"):
        load_pairs(scan(tmp_path / "before"), None)


def fake_vae(images):
    return [torch.from_numpy(np.asarray(im, dtype=np.float32)).mean() * torch.ones(4, im.height // 8, im.width // 8)
            for im in images]


def test_each_pair_is_one_sample_with_its_before_latent_flipped_together(tmp_path):
    write(tmp_path / "before", "a.png", value=10)
    write(tmp_path / "after", "a.png", value=200)
    data, _ = load_pairs(scan(tmp_path / "before"), scan(tmp_path / "after"))
    samples, skipped = build_samples(ds.with_flip(data, "random"), fake_vae)
    assert len(samples) == 1 and not skipped
    s = samples[0]
    assert s.caption == "elf" and s.latent.mean().item() == pytest.approx(200)
    assert s.partner_latent.mean().item() == pytest.approx(10) and s.partner_flipped is not None


class Rig:
    def __init__(self):
        self.unet, self.te = TinyUNet(), TinyTextEncoder()
        self.ms = ob.DiscreteEps()
        self.network = LoRANetwork({"lora_unet": self.unet}, NetworkConfig(rank=4, alpha=4.0, conv_rank=4,
                                                                            conv_alpha=4.0), seed=0)

    def denoise(self, x_t, sigma, cond, **extra):
        return self.unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)

    def encode(self, captions):
        return self.te(captions), {}


class SpyNetwork:
    def __init__(self):
        self.seen = []
        self.multiplier = 1.0

    def set_multiplier(self, value):
        self.seen.append(value)
        self.multiplier = value


def noised_pair(ms, seed=0):
    g = torch.Generator().manual_seed(seed)
    after, before = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    noise, sigma = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.5, 3.0])
    return ob.NoisedBatch(after, noise, sigma, ms.noise_scaling(sigma, noise, after), torch.randn(2, 6, 8),
                          partner=before)


def test_pair_loss_is_the_mean_of_the_two_terms_with_shared_noise_and_the_strengths_plus_then_minus():
    rig = Rig()
    batch = noised_pair(rig.ms)
    loss = PairSliderLoss(strength=0.7)
    loss.bind(None, rig.network)
    seen_inputs = []

    def denoise(x_t, sigma, cond, **extra):
        seen_inputs.append(x_t)
        return rig.denoise(x_t, sigma, cond)

    with rig.network.applied():  # untrained LoRA: up weights are zero, so each side is the plain loss
        got = loss(denoise, rig.ms, batch)
        before = ob.NoisedBatch(batch.partner, batch.noise, batch.sigma,
                                rig.ms.noise_scaling(batch.sigma, batch.noise, batch.partner), batch.cond)
        plain = ob.DenoisingLoss()
        expected = 0.5 * (plain(rig.denoise, rig.ms, batch) + plain(rig.denoise, rig.ms, before))
    assert torch.equal(got, expected)
    alpha, _ = ob.noise_coefficients(rig.ms, batch.sigma)
    # shared noise and σ: the two noised inputs differ exactly by α(σ)·(x0_after − x0_before)
    assert torch.allclose(seen_inputs[0] - seen_inputs[1], alpha * (batch.x0 - batch.partner), atol=1e-5)
    spy = SpyNetwork()
    loss.bind(None, spy)
    loss(rig.denoise, rig.ms, batch)
    assert spy.seen == [0.7, 1.0, -0.7, 1.0] and spy.multiplier == 1.0


def test_pair_loss_refuses_single_images_and_bad_strengths():
    rig = Rig()
    loss = PairSliderLoss()
    loss.bind(None, rig.network)
    batch = noised_pair(rig.ms)
    batch.partner = None
    with pytest.raises(ValueError, match="every sample to be a before/after pair.*Load Image Pairs"):
        loss(rig.denoise, rig.ms, batch)
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="pair_strength must be a finite number above 0"):
            PairSliderLoss(strength=bad)


def x0_estimate(rig, x_t, sigma, cond, multiplier):
    rig.network.set_multiplier(multiplier)
    try:
        return rig.ms.calculate_denoised(sigma, rig.denoise(x_t, sigma, cond), x_t)
    finally:
        rig.network.set_multiplier(1.0)


def test_plus_one_moves_toward_after_and_minus_one_toward_before():
    rig = Rig()
    rig.ms = ob.RectifiedFlow()  # a flow target carries x0 directly; an ε target scales the pair's difference by 1/σ
    g = torch.Generator().manual_seed(3)
    delta = torch.zeros(4, 8, 8)
    delta[0] = 0.5  # "after" = "before" with channel 0 raised
    samples = []
    for _ in range(4):
        before = torch.randn(4, 8, 8, generator=g) * 0.5
        samples.append(TrainSample(latent=before + delta, caption="elf", partner_latent=before))
    config = TrainConfig(unet_lr=1e-2, max_steps=60, batch_size=4, save_every_epochs=0, seed=0)
    Trainer(config, rig.network, rig.denoise, rig.ms, samples, rig.encode, objective=PairSliderLoss()).run()
    assert all(m.multiplier == 1.0 for m in rig.network.modules_by_key.values())  # back at the trained strength
    held, noise = torch.randn(8, 4, 8, 8, generator=g) * 0.5, torch.randn(8, 4, 8, 8, generator=g)
    sigma = torch.full((8,), 0.6)
    x_t = rig.ms.noise_scaling(sigma, noise, held)
    cond = rig.te(["elf"] * 8)
    with torch.no_grad(), rig.network.applied():
        base, plus, minus = (x0_estimate(rig, x_t, sigma, cond, m) for m in (0.0, 1.0, -1.0))
    direction = delta.expand(8, -1, -1, -1).flatten()
    cos = torch.nn.functional.cosine_similarity
    assert cos((plus - base).flatten(), direction, dim=0) > 0.5  # +1: toward "after"
    assert cos((minus - plus).flatten(), direction, dim=0) < -0.5  # −1: on the "before" side of +1
    shift = lambda x: ((x - base).flatten() @ direction).item()  # noqa: E731 - movement along the pair's direction
    assert shift(minus) < shift(plus)
