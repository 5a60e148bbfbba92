"""Animated GIF / WebP / PNG (APNG) files as short clips (core/clips.py, core/images.animation_frames): frames in
playing order, partial frames composited, too-short and still files, links, and bounded decoding."""

import numpy as np
import pytest
from PIL import Image

from atelier.core.clips import prepare_clip, scan_clips
from atelier.core.dataset import DatasetError, Preparation, describe, with_preparation
from atelier.core.images import animation_frames
from atelier.core.paths import PathRefused
from atelier.trainers.data import LatentCache, build_samples
from atelier.trainers.reuse import data_digest

FORMATS = {".gif": {}, ".webp": {"lossless": True}, ".png": {}}  # lossless: frame values survive exactly


def write_animation(path, n, size=(16, 16), start=1, caption="an animation"):
    """An animation of n frames where frame i is grey 20·i; '<name>.txt' beside it unless caption is None."""
    frames = [Image.new("RGB", size, (20 * (i + start),) * 3) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, **FORMATS[path.suffix])
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def values(sample):
    return [int(np.asarray(f)[0, 0, 0]) for f in prepare_clip(sample)]


@pytest.mark.parametrize("ext", list(FORMATS))
def test_an_animated_file_is_a_clip_of_its_first_frames_in_order(tmp_path, ext):
    write_animation(tmp_path / f"walk{ext}", 7, caption="a walk cycle")
    ds = scan_clips(tmp_path, frames=5)
    (item,) = ds.subsets[0].items
    assert item.caption == "a walk cycle" and (item.width, item.height) == (16, 16)
    assert item.frames == (item.source,) and item.source.endswith(f"walk{ext}")
    (sample,) = ds.samples()
    assert values(sample) == [20, 40, 60, 80, 100]


def test_folder_clips_and_animated_clips_load_together(tmp_path):
    (tmp_path / "turn").mkdir()
    for i in range(5):
        Image.new("RGB", (16, 16), (5 * i,) * 3).save(tmp_path / "turn" / f"{i}.png")
    (tmp_path / "turn.txt").write_text("a turn", encoding="utf-8")
    write_animation(tmp_path / "walk.gif", 5, caption="a walk")
    ds = scan_clips(tmp_path, frames=5, caption_source="filename")
    assert [i.caption for i in ds.subsets[0].items] == ["turn", "walk"]
    assert "2 clips of 5 frames" in describe(ds)


def partial_frames():
    """Three frames whose later ones differ from the one before in a small square only (so encoders store only that
    square), with a transparent GIF background in between: decoding them right needs compositing."""
    base = np.full((16, 16, 3), (200, 30, 30), np.uint8)
    second = base.copy()
    second[0:4, 0:4] = (30, 30, 200)  # a blue square top left, kept into the third frame
    third = second.copy()
    third[10:14, 10:14] = (30, 200, 30)  # a green square bottom right, added
    return [Image.fromarray(a) for a in (base, second, third)]


@pytest.mark.parametrize("ext", list(FORMATS))
def test_partial_frames_are_composited_onto_the_frames_before(tmp_path, ext):
    frames = partial_frames()
    path = tmp_path / f"blink{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, **FORMATS[ext])
    if ext != ".webp":  # (libwebp composites inside its own decoder)
        with Image.open(path) as img:  # the file really stores a partial third frame
            img.seek(2)
            assert img.tile[0].extents == (10, 10, 14, 14)
    decoded = [np.asarray(f.convert("RGB")) for f in animation_frames(path, 3)]
    for got, want in zip(decoded, frames):
        assert np.array_equal(got, np.asarray(want))


def test_gif_disposal_to_background_clears_the_previous_frame(tmp_path):
    # frame 2 draws a blue square and is disposed to background; frame 3 is transparent where the square was, so it
    # must show the cleared canvas there, not frame 2's square (a decoder without disposal would show blue)
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (3 * 253)  # 0 transparent, 1 red, 2 blue
    first = Image.new("P", (16, 16), 1)
    first.putpalette(palette)
    square, hole = first.copy(), first.copy()
    square.paste(2, (0, 0, 4, 4))
    hole.paste(0, (0, 0, 4, 4))
    hole.paste(2, (12, 12, 16, 16))
    first.save(tmp_path / "dispose.gif", save_all=True, append_images=[square, hole], duration=40,
               disposal=[1, 2, 1], transparency=0)
    frames = [np.asarray(f.convert("RGB")) for f in animation_frames(tmp_path / "dispose.gif", 3)]
    assert [f[1, 1].tolist() for f in frames[:2]] == [[255, 0, 0], [0, 0, 255]]
    assert frames[2][1, 1].tolist() != [0, 0, 255] and frames[2][13, 13].tolist() == [0, 0, 255]
    assert frames[2][8, 8].tolist() == [255, 0, 0]


def test_too_few_frames_is_an_error_naming_the_file_like_a_short_folder(tmp_path):
    write_animation(tmp_path / "short.gif", 3)
    with pytest.raises(DatasetError, match=r"Clip '.*short.gif' has 3 frame\(s\); this subset takes clip_frames = 5"):
        scan_clips(tmp_path, frames=5)


@pytest.mark.parametrize("ext", [".png", ".webp", ".gif"])
def test_a_still_image_is_skipped_and_reported_not_a_clip(tmp_path, ext):
    Image.new("RGB", (16, 16)).save(tmp_path / f"cover{ext}")
    write_animation(tmp_path / "walk.png", 5)
    ds = scan_clips(tmp_path, frames=5)
    assert [i.source.rsplit("/", 1)[-1] for i in ds.subsets[0].items] == ["walk.png"]
    (skip,) = ds.skipped
    assert skip.path.endswith(f"cover{ext}") and "still" in skip.reason and "not an animation" in skip.reason
    (tmp_path / "walk.png").unlink()
    with pytest.raises(DatasetError, match="animated GIF, WebP or PNG"):
        scan_clips(tmp_path, frames=5)


def test_other_extensions_and_captions_are_not_clips(tmp_path):
    write_animation(tmp_path / "walk.gif", 5)
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.jpg")
    ds = scan_clips(tmp_path, frames=5)
    assert len(ds.subsets[0].items) == 1 and not ds.skipped


def test_an_animation_linked_from_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    write_animation(outside / "private.gif", 5)
    write_animation(root / "walk.gif", 5)
    (root / "leak.gif").symlink_to(outside / "private.gif")
    (root / "leak.txt").write_text("x", encoding="utf-8")
    ds = scan_clips(root, frames=5)
    assert len(ds.subsets[0].items) == 1
    assert [s.reason for s in ds.skipped] == ["symlink leads outside the allowed root; not read"]
    (sample,) = ds.samples()
    (root / "walk.gif").unlink()
    (root / "walk.gif").symlink_to(outside / "private.gif")  # swapped in after the scan
    with pytest.raises(DatasetError, match="Clip 'walk.gif' was replaced by a link"):
        prepare_clip(sample)
    with pytest.raises(PathRefused, match="walk.gif"):
        data_digest(ds)


def test_no_frame_past_clip_frames_is_decoded(tmp_path, monkeypatch):
    from PIL import GifImagePlugin

    write_animation(tmp_path / "long.gif", 9)
    loaded = []
    load = GifImagePlugin.GifImageFile.load

    def counting_load(self):
        loaded.append(self.tell())
        return load(self)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "load", counting_load)
    ds = scan_clips(tmp_path, frames=5)
    assert loaded == []  # the scan reads headers only
    (sample,) = ds.samples()
    assert values(sample) == [20, 40, 60, 80, 100] and max(loaded) == 4


def test_decoded_pixels_per_clip_are_capped(tmp_path):
    write_animation(tmp_path / "big.webp", 5, size=(32, 32))
    write_animation(tmp_path / "small.gif", 5)
    with pytest.raises(DatasetError, match=r"Clip '.*big.webp' would decode 5 frames of 32×32 = 5,120 pixels, over "
                                           r"the limit of 5,000 per clip"):
        scan_clips(tmp_path, frames=5, max_clip_pixels=5000)
    ds = scan_clips(tmp_path, frames=5, max_pixels=1000)  # a frame over the per-image limit: skipped, reported
    (skip,) = ds.skipped
    assert skip.path.endswith("big.webp") and "decompression-bomb guard" in skip.reason
    assert len(ds.subsets[0].items) == 1


def fake_clip_encoder(calls):
    """(4, T', h, w) latents whose values follow the frames, standing in for the video VAE."""
    def encode(frames):
        calls.append(len(frames))
        x = np.stack([np.asarray(f, dtype=np.float32).mean(-1) / 255 for f in frames])  # (T, H, W)
        import torch
        return torch.from_numpy(x[[0] + list(range(4, len(frames), 4)), ::8, ::8])[None].repeat(4, 1, 1, 1)
    return encode


def test_the_cache_and_run_identity_key_on_the_animation_file_bytes(tmp_path):
    write_animation(tmp_path / "walk.webp", 5)
    ds = with_preparation(scan_clips(tmp_path, frames=5), Preparation(mode="crop", width=16, height=16))
    calls, identity = [], data_digest(ds)
    cache = LatentCache(tmp_path / "cache", "enc")
    (sample,), _ = build_samples(ds, None, cache=cache, encode_clip=fake_clip_encoder(calls))
    assert calls == [5] and tuple(sample.latent.shape) == (4, 2, 2, 2)
    again = LatentCache(tmp_path / "cache", "enc")
    build_samples(ds, None, cache=again, encode_clip=fake_clip_encoder(calls))
    assert (again.hits, again.misses, calls) == (1, 0, [5])
    write_animation(tmp_path / "walk.webp", 5, start=2)  # the same name, other frames
    edited = LatentCache(tmp_path / "cache", "enc")
    (changed,), _ = build_samples(ds, None, cache=edited, encode_clip=fake_clip_encoder(calls))
    assert (edited.hits, edited.misses) == (0, 1) and data_digest(ds) != identity
    assert not np.allclose(changed.latent.numpy(), sample.latent.numpy())


def test_a_gif_frame_larger_than_its_canvas_is_refused_before_it_is_decoded(tmp_path):
    from atelier.core.images import ImageRejected, animation_frames

    frames = [Image.new("RGB", (16, 16), (10 * i, 0, 0)) for i in range(3)]
    path = tmp_path / "grow.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40)
    data = bytearray(path.read_bytes())
    # the third image descriptor (0x2C, left, top, width, height little-endian): claim 14000 x 14000 pixels
    starts = [i for i in range(len(data) - 9) if data[i] == 0x2C and data[i + 5:i + 9] == bytes([16, 0, 16, 0])]
    assert len(starts) == 3
    data[starts[2] + 5:starts[2] + 9] = (14000).to_bytes(2, "little") * 2
    path.write_bytes(bytes(data))
    with pytest.raises(ImageRejected) as e:
        list(animation_frames(path, 3))
    assert "frame 3" in str(e.value) and ("re-export" in str(e.value))
