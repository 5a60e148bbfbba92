"""Short clips (core/clips.py): a folder of frames per clip, natural frame order, the Wan 1 + 4k frame rule, one
size per clip, and a cache / run identity that key on every frame."""

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.core.clips import frame_count_problem, latent_frames, prepare_clip, scan_clips
from atelier.core.dataset import DatasetError, Preparation, with_flip, with_preparation
from atelier.trainers.data import LatentCache, build_samples
from atelier.trainers.reuse import data_digest


def write_clip(top, name, n, size=(16, 16), caption="a clip", start=1):
    """A clip folder of n frames named f1, f2, … f10 (natural order differs from text order); frame i has value i."""
    (top / name).mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (10 * (i + start),) * 3).save(top / name / f"f{i + start}.png")
    if caption is not None:
        (top / f"{name}.txt").write_text(caption, encoding="utf-8")


def frame_values(sample):
    return [int(np.asarray(f)[0, 0, 0]) for f in prepare_clip(sample)]


def test_frames_in_natural_order_and_caption_beside_the_folder(tmp_path):
    write_clip(tmp_path, "walk", 11, caption="a walk cycle")
    ds = scan_clips(tmp_path, frames=9)
    (item,) = ds.subsets[0].items
    assert item.caption == "a walk cycle" and (item.width, item.height) == (16, 16) and ds.subsets[0].clip_frames == 9
    (sample,) = ds.samples()
    assert sample.clip_frames == 9
    # f1, f2, …, f9: natural order (text order would put f10 and f11 after f1)
    assert frame_values(sample) == [10 * i for i in range(1, 10)]


@pytest.mark.parametrize("frames, ok", [(1, True), (5, True), (9, True), (17, True), (0, False), (2, False),
                                        (4, False), (6, False), (16, False)])
def test_frame_count_rule_is_one_plus_four_k(tmp_path, frames, ok):
    assert (frame_count_problem(frames) is None) == ok
    if not ok:
        write_clip(tmp_path, "walk", 20)
        with pytest.raises(DatasetError, match=r"clip_frames is .*1 \+ 4k frames"):
            scan_clips(tmp_path, frames=frames)
    assert latent_frames(5) == 2 and latent_frames(17) == 5


def test_mismatched_frame_size_names_the_clip_and_the_frames(tmp_path):
    write_clip(tmp_path, "good", 5)
    write_clip(tmp_path, "jump", 5)
    Image.new("RGB", (24, 16)).save(tmp_path / "jump" / "f3.png")
    with pytest.raises(DatasetError, match=r"Clip '.*jump': frame 'f3.png' is 24×16 but frame 'f1.png' is 16×16"):
        scan_clips(tmp_path, frames=5)


def test_too_few_frames_is_an_error_naming_the_clip(tmp_path):
    write_clip(tmp_path, "short", 4)
    with pytest.raises(DatasetError, match=r"Clip '.*short' has 4 frame\(s\); this subset takes clip_frames = 5"):
        scan_clips(tmp_path, frames=5)


def test_missing_caption_error_and_skip(tmp_path):
    write_clip(tmp_path, "walk", 5, caption=None)
    write_clip(tmp_path, "turn", 5)
    with pytest.raises(DatasetError, match=r"Clip '.*walk' has no caption file 'walk.txt' beside its folder"):
        scan_clips(tmp_path, frames=5)
    ds = scan_clips(tmp_path, frames=5, on_missing_caption="skip")
    assert [i.caption for i in ds.subsets[0].items] == ["a clip"] and "walk.txt" in ds.skipped[0].reason


def test_no_clips_says_how_to_lay_them_out(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "still.png")
    with pytest.raises(DatasetError, match="put each clip's frames in its own subfolder"):
        scan_clips(tmp_path, frames=5)


def fake_clip_encoder(calls):
    """(C=4, T'=1 + (T-1)/4, h, w) latents whose values follow the frames, standing in for the video VAE."""
    def encode(frames):
        calls.append(len(frames))
        x = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) / 255 for f in frames]))  # (T, H, W, 3)
        picks = x[[0] + list(range(4, len(frames), 4))].mean(-1)  # (T', H, W)
        return picks[None, :, ::8, ::8].repeat(4, 1, 1, 1)  # (4, T', h, w)
    return encode


def test_build_samples_encodes_each_clip_whole_and_the_cache_keys_on_every_checked_frame(tmp_path):
    write_clip(tmp_path / "clips", "walk", 6)
    write_clip(tmp_path / "clips", "turn", 5, start=20)
    ds = with_preparation(scan_clips(tmp_path / "clips", frames=5), Preparation(mode="crop", width=16, height=16))
    calls = []
    cache = LatentCache(tmp_path / "cache", "enc")
    samples, _ = build_samples(ds, lambda imgs: pytest.fail("a clip is never encoded frame by frame"), cache=cache,
                               encode_clip=fake_clip_encoder(calls))
    assert calls == [5, 5] and [tuple(s.latent.shape) for s in samples] == [(4, 2, 2, 2)] * 2
    identity = data_digest(ds)
    again = LatentCache(tmp_path / "cache", "enc")
    build_samples(ds, None, cache=again, encode_clip=fake_clip_encoder(calls))
    assert (again.hits, again.misses, calls) == (2, 0, [5, 5])
    Image.new("RGB", (16, 16), (99, 99, 99)).save(tmp_path / "clips" / "walk" / "f6.png")  # past the 5th: unread
    assert data_digest(ds) == identity
    Image.new("RGB", (16, 16), (99, 99, 99)).save(tmp_path / "clips" / "walk" / "f3.png")  # a trained frame
    edited = LatentCache(tmp_path / "cache", "enc")
    build_samples(ds, None, cache=edited, encode_clip=fake_clip_encoder(calls))
    assert (edited.hits, edited.misses) == (1, 1) and data_digest(ds) != identity


def test_random_flip_encodes_the_mirrored_clip(tmp_path):
    write_clip(tmp_path, "walk", 5)
    ds = with_flip(with_preparation(scan_clips(tmp_path, frames=5), Preparation(mode="crop", width=16, height=16)),
                   "random")
    calls = []
    (sample,), _ = build_samples(ds, None, encode_clip=fake_clip_encoder(calls))
    assert calls == [5, 5] and sample.flipped_latent.shape == sample.latent.shape


def test_clips_without_a_video_vae_are_refused(tmp_path):
    write_clip(tmp_path, "walk", 5)
    ds = with_preparation(scan_clips(tmp_path, frames=5), Preparation(mode="crop", width=16, height=16))
    with pytest.raises(DatasetError, match=r"Clip 'walk' needs a video model's VAE \(Wan 2.x\)"):
        build_samples(ds, lambda imgs: [torch.zeros(4, 2, 2)] * len(imgs))


def test_report_counts_clips_and_their_frames(tmp_path):
    write_clip(tmp_path, "walk", 5)
    write_clip(tmp_path, "turn", 5)
    (tmp_path / "empty").mkdir()
    from atelier.core.dataset import describe

    report = describe(scan_clips(tmp_path, frames=5, repeats=3))
    assert "2 clips of 5 frames × 3 repeats" in report and "empty: no frames" in report


def test_a_frame_swapped_for_an_outside_link_after_the_scan_is_never_read(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    write_clip(root, "walk", 5)
    Image.new("RGB", (16, 16), (200, 200, 200)).save(outside / "private.png")
    ds = scan_clips(root, frames=5)
    (sample,) = ds.samples()
    assert len(sample.item.frames) == 5 and all(f.startswith(str(root.resolve())) for f in sample.item.frames)
    (root / "walk" / "f2.png").unlink()
    (root / "walk" / "f2.png").symlink_to(outside / "private.png")  # planted after the scan
    (root / "walk" / "f6.png").symlink_to(outside / "private.png")  # an extra frame past clip_frames
    with pytest.raises(DatasetError, match="frame 'f2.png' was replaced by a link"):
        prepare_clip(sample)
    from atelier.core.paths import PathRefused
    with pytest.raises(PathRefused, match="f2.png"):
        data_digest(ds)


def test_the_clip_digest_reads_only_the_checked_frames(tmp_path):
    write_clip(tmp_path, "walk", 5)
    ds = scan_clips(tmp_path, frames=5)
    before = data_digest(ds)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "walk" / "f6.png")  # past clip_frames: not trained on
    assert data_digest(ds) == before
