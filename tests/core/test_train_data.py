"""From dataset to trainer samples: VAE-size checks, mirrored latents, prior-preservation balancing."""

import dataclasses

import numpy as np
import pytest
import torch

from atelier.core import dataset as ds
from atelier.trainers.data import balance_regularization, build_samples, kohya_metadata
from atelier.trainers.loop import TrainConfig, TrainSample
from atelier.trainers.network import NetworkConfig


def fake_vae(images):
    """A stand-in encoder with the VAE's contract: PIL (W, H) → (4, H/8, W/8) latents from the pixels' means."""
    return [torch.from_numpy(np.asarray(im, dtype=np.float32)).mean() * torch.ones(4, im.height // 8, im.width // 8)
            for im in images]


def graph_dataset(sizes, role="train", repeats=1, name="s"):
    arrays = [np.full((h, w, 3), 10 * i, np.uint8) for i, (w, h) in enumerate(sizes)]
    return ds.from_arrays(arrays, [f"cap {i}" for i in range(len(sizes))], name=name, role=role, repeats=repeats)


def test_sizes_the_vae_cannot_encode_are_a_clear_error():
    with pytest.raises(ds.DatasetError,
                       match=r"is 60×64; the VAE needs sides that are multiples of 8.*Prepare Dataset"):
        build_samples(graph_dataset([(60, 64)]), fake_vae)


def test_random_flip_caches_the_mirrored_latent_and_prior_weights_carry_over():
    train = ds.with_flip(graph_dataset([(16, 16), (16, 8)], repeats=3), "random")
    reg_set = graph_dataset([(16, 16)], role="regularization", name="reg")
    reg_set = dataclasses.replace(reg_set, subsets=tuple(dataclasses.replace(s, prior_loss_weight=0.5)
                                                         for s in reg_set.subsets))
    d = ds.combine(train, reg_set)
    samples, skipped = build_samples(d, fake_vae)
    assert not skipped and [s.random_flip for s in samples] == [True, True, False]
    assert samples[0].flipped_latent is not None and samples[2].flipped_latent is None
    assert samples[2].regularization and samples[2].loss_weight == 0.5 and samples[0].loss_weight == 1.0
    assert samples[2].repeats == 6  # one reg image repeated to match 2 images × 3 repeats


def sample(repeats, reg=False):
    return TrainSample(latent=torch.zeros(4, 2, 2), caption="", repeats=repeats, regularization=reg)


@pytest.mark.parametrize("train, reg, expected", [
    ([10, 10], [1, 1, 1], [7, 7, 6]),  # too few reg images: repeats added round-robin up to 20
    ([2], [1, 1, 1, 1], [1, 1]),  # too many: the first ones fill the count, the rest are unused
    ([5], [], []),
])
def test_balance_regularization_matches_kohya(train, reg, expected):
    out = balance_regularization([sample(r) for r in train] + [sample(r, True) for r in reg])
    assert [s.repeats for s in out if s.regularization] == expected
    if reg:
        assert sum(s.repeats for s in out if s.regularization) == sum(train)


def test_metadata_has_kohya_keys():
    d = graph_dataset([(16, 16)], repeats=10, name="elf")
    meta = kohya_metadata(config=TrainConfig(), network_config=NetworkConfig(rank=32, alpha=16.0), dataset=d,
                          output_name="elf", base_model="sd15", steps=100, epoch=10, started=1.0, finished=2.0,
                          resolution=(512, 512))
    assert meta["ss_network_dim"] == "32" and meta["ss_network_alpha"] == "16.0" and meta["ss_epoch"] == "10"
    assert '"n_repeats": 10' in meta["ss_dataset_dirs"] and all(isinstance(v, str) for v in meta.values())


def test_latent_cache_skips_encoding_and_follows_content_and_preparation(tmp_path):
    from PIL import Image

    from atelier.trainers.data import LatentCache

    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(folder / f"{i}.png")
    d = ds.with_preparation(ds.scan_folder(folder, caption_source="fixed", fixed_caption="x"),
                            ds.Preparation("crop", 16, 16))
    calls = []

    def counting_vae(images):
        calls.append(len(images))
        return fake_vae(images)

    cache = LatentCache(tmp_path / "cache", encoder_key="vae-a")
    first, _ = build_samples(d, counting_vae, cache=cache)
    assert sum(calls) == 3 and cache.misses == 3
    again, _ = build_samples(d, counting_vae, cache=LatentCache(tmp_path / "cache", "vae-a"))
    assert sum(calls) == 3  # all three came from disk
    assert all(torch.equal(a.latent, b.latent) for a, b in zip(first, again))
    Image.new("RGB", (16, 16), (0, 0, 255)).save(folder / "1.png")  # new content
    build_samples(d, counting_vae, cache=LatentCache(tmp_path / "cache", "vae-a"))
    assert sum(calls) == 4
    build_samples(ds.with_preparation(d, ds.Preparation("crop", 8, 8)), counting_vae,
                  cache=LatentCache(tmp_path / "cache", "vae-a"))
    assert sum(calls) == 7  # another preparation: re-encoded
    build_samples(d, counting_vae, cache=LatentCache(tmp_path / "cache", "vae-b"))
    assert sum(calls) == 10  # another encoder: re-encoded
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]  # no temp file left


def rgba_left_transparent(path, size=(32, 16)):
    from PIL import Image

    arr = np.zeros((size[1], size[0], 4), np.uint8)
    arr[..., 0] = 200
    arr[:, size[0] // 2:, 3] = 255  # right half opaque, left half transparent
    Image.fromarray(arr, "RGBA").save(path)


def test_alpha_mask_follows_crop_letterbox_and_mirroring(tmp_path):
    from atelier.core.prepare import prepare_sample_and_mask

    rgba_left_transparent(tmp_path / "a.png")
    base = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x")
    crop = ds.with_preparation(base, ds.Preparation("crop", 16, 16)).samples()[0]
    _, m = prepare_sample_and_mask(crop)
    m = np.asarray(m)
    assert m[:, :6].max() == 0 and m[:, 10:].min() == 255  # centre crop of 32×16: columns 8..24 of the source
    box = ds.with_preparation(base, ds.Preparation("letterbox", 32, 32)).samples()[0]
    _, m = prepare_sample_and_mask(box)
    m = np.asarray(m)
    assert m[:7].max() == 0 and m[9:23, 18:].min() == 255 and m[25:].max() == 0  # bars are masked out
    mirrored = ds.with_flip(ds.with_preparation(base, ds.Preparation("none", 32, 16)), "copies").samples()[1]
    _, m = prepare_sample_and_mask(mirrored)
    assert np.asarray(m)[:, :16].min() == 255 and np.asarray(m)[:, 16:].max() == 0
    opaque = tmp_path / "opaque"
    opaque.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(opaque / "b.png")
    assert prepare_sample_and_mask(ds.scan_folder(opaque, on_missing_caption="empty").samples()[0])[1] is None


def test_build_samples_attaches_latent_resolution_masks(tmp_path):
    rgba_left_transparent(tmp_path / "a.png", size=(32, 32))
    d = ds.with_preparation(ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x"),
                            ds.Preparation("none", 32, 32))
    (s,), _ = build_samples(d, fake_vae, masks=True)
    assert s.mask.shape == (1, 4, 4) and torch.equal(s.mask[0, :, :2], torch.zeros(4, 2))
    assert torch.equal(s.mask[0, :, 2:], torch.ones(4, 2))
    (plain,), _ = build_samples(d, fake_vae, masks=False)
    assert plain.mask is None


def test_masked_loss_is_the_mean_over_the_mask():
    from tiny_models import TinyTextEncoder, TinyUNet

    from atelier.trainers import objectives as ob
    from atelier.trainers.loop import Trainer
    from atelier.trainers.network import LoRANetwork

    unet, te, ms = TinyUNet(), TinyTextEncoder(), ob.DiscreteEps()
    seen = {}

    def denoise(x_t, sigma, cond, **extra):
        out = unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma), cond)
        seen.update(x_t=x_t, sigma=sigma, out=out.detach())
        return out

    mask = torch.zeros(1, 8, 8)
    mask[:, :, 5:] = 1.0
    latent = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    sample = TrainSample(latent=latent, caption="x", mask=mask)
    t = Trainer(TrainConfig(masked_loss=True, save_every_epochs=0), LoRANetwork({"lora_unet": unet},
                NetworkConfig(rank=2, alpha=2.0)), denoise, ms, [sample], lambda c: (te(c), {}))
    loss = t.micro_batch_loss([(0, 0)], 0, 1).item()
    target = ob.prediction_target(ms, seen["sigma"], seen["x_t"], latent[None])
    expected = ((seen["out"] - target) ** 2)[..., 5:].mean().item()  # only the unmasked columns
    assert loss == pytest.approx(expected, rel=1e-5)
    unmasked = Trainer(TrainConfig(save_every_epochs=0), t.network, denoise, ms, [sample], lambda c: (te(c), {}))
    assert unmasked.micro_batch_loss([(0, 0)], 0, 1).item() == pytest.approx(
        ((seen["out"] - target) ** 2).mean().item(), rel=1e-5)
