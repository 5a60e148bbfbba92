"""Bad data in, clear refusal or skip-and-report out: caption limits and cleaning, allow-lists, bounded caption work,
animated and extreme-aspect images, a broken image during tagging, and a pasted training config."""

import math

import numpy as np
import pytest
from PIL import Image

from atelier.core import caption_text as ct
from atelier.core import captions as cap
from atelier.core import dataset as ds
from atelier.core.caption_io import write_captions
from atelier.core.images import image_info
from atelier.core.prepare import prepare_all, prepare_sample
from atelier.trainers.loop import CONFIG_RANGES, TrainConfig


def image(path, size=(32, 32), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ---------------------------------------------------------------- allow-lists


@pytest.mark.parametrize("given, expected", [(".txt", ".txt"), ("txt", ".txt"), (".TXT", ".txt"),
                                             (".caption", ".caption"), ("tags", ".tags")])
def test_caption_extension_allowed(given, expected):
    assert ct.check_caption_extension(given) == expected


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", ".txt/../../x", ".exe", ".png", "txt\x00", "." + "t" * 5000])
def test_caption_extension_refused_with_the_list(bad):
    with pytest.raises(ct.CaptionRefused) as info:
        ct.check_caption_extension(bad)
    message = str(info.value)
    assert "caption_extension" in message and ".txt, .caption, .tags" in message
    assert len(message) < 300  # a 5,000-character value is not echoed back whole


@pytest.mark.parametrize("good", ["utf-8", "UTF8", "utf_8", "cp1252", "latin-1", "shift_jis", "utf-16", "gbk"])
def test_caption_encoding_allowed(good):
    assert ct.check_caption_encoding(good) == good


@pytest.mark.parametrize("bad", ["punycode", "rot13", "base64", "zlib", "idna", "raw_unicode_escape", "nonsense", ""])
def test_caption_encoding_refused_with_the_list(bad):
    with pytest.raises(ct.CaptionRefused, match="not an allowed text encoding; use one of utf-8, utf-8-sig"):
        ct.check_caption_encoding(bad)


def test_scan_refuses_bad_extension_and_encoding_before_reading(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption", encoding="utf-8")
    with pytest.raises(ct.CaptionRefused, match="caption_extension '../x'"):
        ds.scan_folder(tmp_path, caption_extension="../x")
    with pytest.raises(ct.CaptionRefused, match="caption_encoding 'punycode'"):
        ds.scan_folder(tmp_path, caption_encoding="punycode")


def test_write_captions_refuses_a_path_as_extension(tmp_path):
    image(tmp_path / "a.png")
    d = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x")
    for bad in (".txt/../../x", "", "."):
        with pytest.raises(ct.CaptionRefused, match="is not allowed; use one of"):
            write_captions(d, allowed_roots=[tmp_path], extension=bad, dry_run=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # nothing written anywhere


# ---------------------------------------------------------------- size limits and cleaning


def test_count_tags_and_size_problem():
    assert ct.count_tags("") == 0 and ct.count_tags("a") == 1 and ct.count_tags("a, b\\, c, d") == 3
    assert ct.caption_size_problem("a, " * 100) is None
    assert "2,001 tags, over the limit of 2,000" in ct.caption_size_problem(", ".join(["t"] * 2001))
    assert "20,001 characters, over the limit of 20,000" in ct.caption_size_problem("x" * 20_001)


def test_clean_caption_removes_controls_and_invisibles():
    text = "1girl, \x1b[31mred\x07, evil\u202etxt.exe, zero\u200bwidth, tab\there"
    cleaned, removed = ct.clean_caption(text)
    assert cleaned == "1girl, [31mred, eviltxt.exe, zerowidth, tab here"
    assert "U+001B ESC" in removed and "U+0007 BEL" in removed
    assert any(r.startswith("U+202E") for r in removed) and any(r.startswith("U+200B") for r in removed)
    assert not any("0009" in r for r in removed)  # a tab is whitespace, not reported


def test_clean_caption_leaves_real_text_alone():
    for text in ("blonde hair, smile", "東京\u3000タワー", "caf\u00e9\u00a0au lait", "emoji 😀"):
        cleaned, removed = ct.clean_caption(text)
        assert cleaned is text and removed == []


def test_scan_skips_oversized_captions_and_notes_cleaned_ones(tmp_path):
    for name in ("ok", "huge", "many", "dirty"):
        image(tmp_path / f"{name}.png")
    (tmp_path / "ok.txt").write_text("fine, caption", encoding="utf-8")
    (tmp_path / "huge.txt").write_bytes(b"x" * (ct.MAX_CAPTION_BYTES + 1))  # refused from its size, never read
    (tmp_path / "many.txt").write_text(", ".join(f"t{i}" for i in range(2500)), encoding="utf-8")
    (tmp_path / "dirty.txt").write_text("bell\x07, rtl\u202eoverride", encoding="utf-8")
    d = ds.scan_folder(tmp_path)
    captions = {it.source.rsplit("/", 1)[-1]: it.caption for it in d.subsets[0].items}
    assert captions == {"dirty.png": "bell, rtloverride", "ok.png": "fine, caption"}
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in d.skipped}
    assert "huge.txt is 80,005 bytes" in reasons["huge.png"] and "shorten it" in reasons["huge.png"]
    assert "many.txt: caption has 2,500 tags, over the limit of 2,000" in reasons["many.png"]
    report = ds.describe(d)
    assert "1 caption(s) cleaned of control or invisible characters (U+0007 BEL" in report and "dirty.txt" in report


def test_fixed_and_graph_captions_are_limited_and_cleaned(tmp_path):
    image(tmp_path / "a.png")
    with pytest.raises(ct.CaptionRefused, match="fixed_caption: caption has 20,001 characters"):
        ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x" * 20_001)
    arrays = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(ct.CaptionRefused, match="caption 2 of 2: caption has 2,001 tags"):
        ds.from_arrays(arrays, ["ok", ", ".join(["t"] * 2001)])
    with pytest.raises(ds.DatasetError, match="Unknown role 'bogus'; expected one of train, regularization"):
        ds.from_arrays(arrays, ["ok"], role="bogus")
    made = ds.from_arrays(arrays, ["a\x1bb", "c"])
    assert [it.caption for it in made.subsets[0].items] == ["ab", "c"] and "caption 1" in made.notes[0]
    attached = ds.attach_captions(made, ["zero\u200bwidth", "fine"])
    assert attached.subsets[0].items[0].caption == "zerowidth" and any("U+200B" in n for n in attached.notes)


def test_an_edit_that_overflows_a_caption_is_refused(tmp_path):
    image(tmp_path / "a.png")
    d = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x")
    many = [f"t{i}" for i in range(2500)]
    with pytest.raises(ds.DatasetError, match="would make the caption of 'a.png' too long: caption has 2,501 tags"):
        cap.apply_to_dataset(d, lambda tags: cap.add_tags(tags, many))


def test_too_many_wildcard_patterns_are_refused():
    with pytest.raises(ValueError, match="at most 1,000 are allowed"):
        cap.remove_tags(["a"], [f"p{i}*" for i in range(1001)], "wildcard")
    assert cap.remove_tags(["a", "p5"], [f"p{i}" for i in range(5000)], "exact") == ["a"]  # a set: no limit


# ---------------------------------------------------------------- bounded, interruptible caption work


def naive_truncate(tags, count, budget, keep_first):
    out = list(tags)
    while len(out) > keep_first and count(cap.join_tags(out)) > budget:
        out.pop()
    return out


@pytest.mark.parametrize("n, budget, keep_first", [(0, 5, 0), (1, 0, 0), (3, 1, 2), (5, 100, 1), (40, 20, 0),
                                                   (40, 20, 3), (40, 20, 60), (200, 75, 1), (7, 3, 7)])
def test_truncate_matches_dropping_one_tag_at_a_time(n, budget, keep_first):
    tags = [f"tag{i} word" if i % 3 else f"t{i}" for i in range(n)]
    expected = naive_truncate(tags, cap.approx_token_count, budget, keep_first)
    assert cap.truncate_to_budget(tags, cap.approx_token_count, budget, keep_first) == expected


def test_truncate_tokenizes_log_many_short_prefixes():
    tags = [f"tag{i}" for i in range(10_000)]
    calls, chars = [], []

    def count(text):
        calls.append(1)
        chars.append(len(text))
        return cap.approx_token_count(text)

    kept = cap.truncate_to_budget(tags, count, 75, 1)
    assert kept == naive_truncate(tags[:200], cap.approx_token_count, 75, 1)
    assert len(calls) <= 2 * math.ceil(math.log2(len(tags))) + 2
    assert max(chars) <= 4 * len(cap.join_tags(kept)) + 10  # never the whole 10,000-tag caption


def test_truncate_and_edits_stop_when_interrupted(tmp_path):
    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        cap.truncate_to_budget(["a", "b", "c"], cap.approx_token_count, 1, 0, check=stop)
    for name in "abc":
        image(tmp_path / f"{name}.png")
    d = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x, y")
    seen = []

    def progress(done):
        seen.append(done)
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        cap.apply_to_dataset(d, lambda tags: tags[:1], on_progress=progress)
    assert seen == [1, 2]


def test_caption_diff_is_linear():
    big = [f"tag{i}" for i in range(2000)]
    before = [(f"{i}.png", cap.join_tags(big)) for i in range(20)]
    after = [(f"{i}.png", cap.join_tags(big[::-1][:1500])) for i in range(20)]
    diff = cap.caption_diff(before, after)
    assert diff.startswith("20 of 20 captions change")
    removed = "-" + ", -".join(f"tag{i}" for i in range(500))  # reversed and cut to the last 1,500: nothing added
    assert diff.count(f".png: {removed}\n") == 20


def test_encoder_text_is_bounded():
    caption = ", ".join(f"tag{i}" for i in range(10_000))
    cut = ct.caption_for_encoder(caption)
    assert len(cut) <= ct.ENCODE_MAX_CHARS and caption.startswith(cut) and not cut.endswith(",")
    assert ct.caption_for_encoder("short, caption") == "short, caption"


# ---------------------------------------------------------------- images


def animation(path, fmt, colors, **kw):
    frames = [Image.new("RGB", (16, 16), c) for c in colors]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, **kw)
    return path


@pytest.mark.parametrize("fmt, ext, kw", [("GIF", "gif", {}), ("WEBP", "webp", {"lossless": True}),
                                          ("PNG", "png", {})])
def test_animated_images_use_frame_one_with_a_note(tmp_path, fmt, ext, kw):
    animation(tmp_path / f"anim.{ext}", fmt, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], **kw)
    image(tmp_path / "still.png", (16, 16))
    assert image_info(tmp_path / f"anim.{ext}")[2:] == (3, fmt)
    d = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x")
    assert f"animated: 1 image(s) use their first frame: anim.{ext} ({fmt}, frame 1 of 3 used)" in ds.describe(d)
    sample = next(s for s in d.samples() if s.item.source.endswith(ext))
    pixel = np.asarray(prepare_sample(sample))[8, 8]
    assert np.abs(pixel.astype(int) - (255, 0, 0)).max() <= 2  # the first frame's red


def test_extreme_strip_is_noted_at_load_and_skipped_in_crop_mode(tmp_path):
    image(tmp_path / "strip.png", (6500, 10))
    image(tmp_path / "photo.png", (60, 40))
    d = ds.scan_folder(tmp_path, caption_source="fixed", fixed_caption="x")
    report = ds.describe(d)
    assert "warning: strip.png: extreme aspect ratio 6500×10 (650:1)" in report and "letterbox" in report
    ok, skipped = prepare_all(ds.with_preparation(d, ds.Preparation("crop", 64, 64)), workers=1)
    assert [p.sample.item.source.rsplit("/", 1)[-1] for p in ok] == ["photo.png"]
    assert "crop to 64×64 would keep only 0.15% of this 6500×10 image" in skipped[0].reason
    ok, skipped = prepare_all(ds.with_preparation(d, ds.Preparation("letterbox", 64, 64)), workers=1)
    assert len(ok) == 2 and not skipped  # letterbox keeps the whole strip, as asked
    ok, skipped = prepare_all(ds.with_preparation(d, ds.Preparation("buckets", 64, 64, bucket_step=8)), workers=1)
    assert len(ok) == 1 and "buckets to" in skipped[0].reason


# ---------------------------------------------------------------- training config


@pytest.mark.parametrize("data, message", [
    ([1, 2], "must be a JSON object such as"),
    ("epochs", "must be a JSON object such as"),
    ({"epochs": 10, "learning_rate": 1e-4}, "Unknown training setting(s) learning_rate; known:"),
    ({"epochs": "10"}, "'epochs' must be an integer, got text (\"10\")"),
    ({"epochs": 2.5}, "'epochs' must be an integer, got a number (2.5)"),
    ({"unet_lr": "fast"}, "'unet_lr' must be a finite number, got text"),
    ({"unet_lr": float("nan")}, "'unet_lr' must be a finite number"),
    ({"train_text_encoder": 1}, "'train_text_encoder' must be true or false, got an integer (1)"),
    ({"optimizer": 3}, "'optimizer' must be text, got an integer"),
    ({"batch_size": 0}, "'batch_size' must be between 1 and 1024, got 0"),
    ({"caption_dropout": 1.5}, "'caption_dropout' must be between 0.0 and 0.99"),
    ({"seed": -1}, "'seed' must be between 0 and 2147483647"),
])
def test_train_config_from_dict_names_the_bad_setting(data, message):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(data)
    assert message in str(info.value)


def test_train_config_round_trips_and_ranges_cover_every_number():
    cfg = TrainConfig(epochs=3, unet_lr=1e-3, optimizer="lion")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    numeric = {k for k, v in cfg.to_dict().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric == set(CONFIG_RANGES)
    for name, (low, high) in CONFIG_RANGES.items():
        assert low <= getattr(TrainConfig(), name) <= high, name


# ---------------------------------------------------------------- tagging


def test_tag_dataset_skips_and_reports_a_broken_image(tmp_path):
    pytest.importorskip("onnx", reason="onnx is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    from tiny_tagger import write_tiny_tagger

    from atelier.core import tagger as tg

    image(tmp_path / "ds" / "good.png", color=(0, 0, 255))
    image(tmp_path / "ds" / "bad.png", (64, 64))
    d = ds.scan_folder(tmp_path / "ds", caption_source="fixed", fixed_caption="old")
    data = (tmp_path / "ds" / "bad.png").read_bytes()
    (tmp_path / "ds" / "bad.png").write_bytes(data[: len(data) // 2])  # truncated after the scan, as on a bad disk
    tagger = tg.load_tagger(write_tiny_tagger(tmp_path / "wd14" / "tiny"))
    out, details = tg.tag_dataset(d, tagger, tg.TagOptions(), "replace", batch_size=4)
    assert [it.source.rsplit("/", 1)[-1] for it in out.subsets[0].items] == ["good.png"]
    assert "blue" in out.subsets[0].items[0].caption
    assert "truncated or corrupt" in details["skipped"]["bad.png"]
    assert "bad.png" in ds.describe(out) and "truncated or corrupt" in ds.describe(out)
    with pytest.raises(ValueError, match="Unknown caption mode 'bogus'"):
        tg.tag_dataset(d, tagger, tg.TagOptions(), "bogus")
