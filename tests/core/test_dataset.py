"""Dataset scanning, captions, repeats, subsets and transforms on tiny real folders."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from atelier.core import dataset as ds
from atelier.core.dataset_io import MANIFEST, save_dataset
from atelier.core.dataset_ops import dedupe_dataset, verify_dataset
from atelier.core.prepare import prepare_all, prepare_sample


def write_image(path, size=(40, 30), color=(200, 30, 30), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def write_caption(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)


@pytest.fixture
def korra(tmp_path):
    """kohya layout: train/10_korra (captioned), train/2_korra_small."""
    root = tmp_path / "train"
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        write_image(root / "10_korra" / f"img_{i}.png", color=color)
        write_caption(root / "10_korra" / f"img_{i}.txt", f"korra, tag{i}\n")
    write_image(root / "2_korra_small" / "a.jpg", color=(9, 9, 9), fmt="JPEG")
    write_caption(root / "2_korra_small" / "a.txt", "small")
    return root


def test_scan_sidecars_and_kohya_repeats(korra):
    d = ds.scan_folder(korra)
    (s,) = d.subsets
    assert s.name == "train" and s.role == "train"
    by_name = {os.path.basename(it.source): it for it in s.items}
    assert by_name["img_0.png"].caption == "korra, tag0" and by_name["img_0.png"].repeats == 10
    assert by_name["a.jpg"].repeats == 2 and (by_name["a.jpg"].width, by_name["a.jpg"].height) == (40, 30)
    assert s.samples_per_epoch == 3 * 10 + 2
    assert ds.scan_folder(korra, repeats=3).subsets[0].samples_per_epoch == 4 * 3


def test_caption_sources(tmp_path):
    folder = tmp_path / "5_sks dog"
    write_image(folder / "korra in her fire nation outfit (2).png")
    write_image(folder / "tlok_artstyle_01.png")
    by_filename = {os.path.basename(i.source): i.caption for i in
                   ds.scan_folder(folder, caption_source="filename").subsets[0].items}
    assert by_filename == {"korra in her fire nation outfit (2).png": "korra in her fire nation outfit",
                           "tlok_artstyle_01.png": "tlok artstyle"}
    assert {i.caption for i in ds.scan_folder(folder, caption_source="folder").subsets[0].items} == {"sks dog"}
    fixed = ds.scan_folder(folder, caption_source="fixed", fixed_caption=" starsectorportrait ")
    assert {i.caption for i in fixed.subsets[0].items} == {"starsectorportrait"}
    assert {i.repeats for i in fixed.subsets[0].items} == {5}


def test_missing_caption_policies(tmp_path):
    write_image(tmp_path / "s" / "a.png")
    write_image(tmp_path / "s" / "b.png")
    write_caption(tmp_path / "s" / "a.txt", "has one")
    with pytest.raises(ds.DatasetError, match=r"'b.png'.*no caption file 'b.txt'.*on_missing_caption"):
        ds.scan_folder(tmp_path / "s")
    skipped = ds.scan_folder(tmp_path / "s", on_missing_caption="skip")
    assert len(skipped) == 1 and skipped.skipped[0].reason == "no caption file b.txt"
    empty = ds.scan_folder(tmp_path / "s", on_missing_caption="empty")
    assert sorted(i.caption for i in empty.subsets[0].items) == ["", "has one"]


def test_empty_caption_file_is_kept_and_noted(tmp_path):
    write_image(tmp_path / "s" / "a.png")
    write_caption(tmp_path / "s" / "a.txt", "  \r\n")
    d = ds.scan_folder(tmp_path / "s")
    assert d.subsets[0].items[0].caption == "" and "empty caption file: a.txt" in d.notes


@pytest.mark.parametrize("raw, encoding, expected", [
    (b"\xef\xbb\xbfkorra, blue eyes", "utf-8", "korra, blue eyes"),  # UTF-8 BOM
    ("korra, ñ".encode("utf-16"), "utf-8", "korra, ñ"),  # UTF-16 with BOM
    (b"line one\r\nline two\r\n", "utf-8", "line one line two"),  # CRLF
    ("café, naïve".encode("cp1252"), "cp1252", "café, naïve"),  # documented fallback encoding
    ("tags: (smile:1.2), 東方".encode(), "utf-8", "tags: (smile:1.2), 東方"),
])
def test_read_caption_encodings(tmp_path, raw, encoding, expected):
    write_caption(tmp_path / "c.txt", raw)
    assert ds.read_caption(tmp_path / "c.txt", encoding) == expected


def test_non_utf8_caption_names_file_and_byte(tmp_path):
    write_image(tmp_path / "s" / "img_012.png")
    write_caption(tmp_path / "s" / "img_012.txt", "caf\xe9 au lait".encode("cp1252"))
    with pytest.raises(ds.CaptionError) as e:
        ds.scan_folder(tmp_path / "s")
    assert str(e.value) == ("Caption file 'img_012.txt' is not utf-8 (byte 0xe9 at 3); re-save it as UTF-8 or set "
                            "caption_encoding (e.g. cp1252).")


def test_nul_bytes_caption(tmp_path):
    write_caption(tmp_path / "c.txt", "abc".encode("utf-16-le"))
    with pytest.raises(ds.CaptionError, match="NUL bytes.*UTF-16"):
        ds.read_caption(tmp_path / "c.txt")


def test_bad_images_are_skipped_and_reported(tmp_path):
    folder = tmp_path / "s"
    write_image(folder / "good.png")
    write_image(folder / "tiff.png", fmt="TIFF")  # a TIFF renamed .png
    (folder / "noise.jpg").write_bytes(os.urandom(300))
    full = folder / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    full.write_bytes(full.read_bytes()[:400])
    d = ds.scan_folder(folder, on_missing_caption="empty")
    reasons = {os.path.basename(s.path): s.reason for s in d.skipped}
    assert "TIFF" in reasons["tiff.png"] and "noise.jpg" in reasons
    verified = verify_dataset(d)
    reasons = {os.path.basename(s.path): s.reason for s in verified.skipped}
    assert "trunc.png" in reasons and {os.path.basename(i.source) for i in verified.subsets[0].items} == {"good.png"}
    assert "trunc.png" in ds.describe(verified) and "TIFF" in ds.describe(verified)


def test_zero_valid_images_names_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.png").write_bytes(b"not an image")
    with pytest.raises(ds.DatasetError, match=r"No usable images in '.*s'.*1 skipped"):
        ds.scan_folder(tmp_path / "s", on_missing_caption="empty")


def test_missing_folder(tmp_path):
    with pytest.raises(ds.DatasetError, match="does not exist"):
        ds.scan_folder(tmp_path / "nope")


def test_symlink_loop_and_escape(tmp_path):
    root = tmp_path / "root"
    write_image(root / "set" / "a.png")
    os.symlink(root / "set", root / "set" / "loop")  # a folder containing itself
    write_image(tmp_path / "outside" / "leak.png")
    os.symlink(tmp_path / "outside", root / "set" / "escape_dir")
    os.symlink(tmp_path / "outside" / "leak.png", root / "set" / "escape.png")
    d = ds.scan_folder(root / "set", root, on_missing_caption="empty")
    assert [os.path.basename(i.source) for i in d.subsets[0].items] == ["a.png"]
    reasons = " | ".join(f"{os.path.basename(s.path)}: {s.reason}" for s in d.skipped)
    assert "loop: symlink loop" in reasons and "escape_dir: symlink leads outside" in reasons
    assert "escape.png: symlink leads outside" in reasons


def test_combine_duplicate_names_and_roles(korra, tmp_path):
    reg = tmp_path / "reg"
    write_image(reg / "img_0.png", color=(1, 2, 3))
    a = ds.scan_folder(korra)
    b = ds.scan_folder(reg, name="train", role="regularization", caption_source="fixed", fixed_caption="woman",
                       prior_loss_weight=0.5)
    both = ds.combine(a, b)
    assert [s.name for s in both.subsets] == ["train", "train_2"]
    assert both.subsets[1].role == "regularization" and both.subsets[1].prior_loss_weight == 0.5
    assert any("img_0.png" in n and "train, train_2" in n for n in both.notes)
    assert len(a.subsets) == 1  # inputs untouched


def test_transforms_leave_input_untouched(korra):
    d = ds.scan_folder(korra, name="orig")
    mirrored = ds.with_flip(d, "copies")
    assert d.subsets[0].flip == "none" and mirrored.subsets[0].samples_per_epoch == 2 * d.subsets[0].samples_per_epoch
    samples = mirrored.samples()
    assert sum(s.mirrored for s in samples) == len(d)
    excluded = ds.with_flip(d, "random", exclude=["orig"])
    assert excluded.subsets[0].flip == "none"
    small = ds.add_downscaled_copy(d, 384, 2)
    assert [s.name for s in small.subsets] == ["orig", "orig_384px"]
    assert small.subsets[1].preparation.width == 384 and {i.repeats for i in small.subsets[1].items} == {2}
    with pytest.raises(ds.DatasetError, match="Unknown subset.*nope.*orig"):
        ds.with_flip(d, "copies", ["nope"])
    with pytest.raises(ds.DatasetError, match="flip mode"):
        ds.with_flip(d, "sideways")


def test_mirrored_copy_is_exactly_flipped(tmp_path):
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, :4] = 255  # white band on the left
    Image.fromarray(arr).save(tmp_path / "a.png")
    d = ds.with_preparation(ds.scan_folder(tmp_path, on_missing_caption="empty"),
                            ds.Preparation(mode="none", width=16, height=16))
    plain, mirrored = ds.with_flip(d, "copies").samples()
    assert (np.asarray(prepare_sample(mirrored)) == np.asarray(prepare_sample(plain))[:, ::-1]).all()


def test_from_arrays_bridge():
    imgs = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128)]
    d = ds.from_arrays(imgs, ["a cat"], repeats=3)
    assert [i.caption for i in d.subsets[0].items] == ["a cat", "a cat"] and d.subsets[0].samples_per_epoch == 6
    prep = ds.with_preparation(d, ds.Preparation(mode="crop", width=8, height=8))
    ok, skipped = prepare_all(prep)
    assert not skipped and np.asarray(ok[1].image)[0, 0, 0] == 128
    assert d.subsets[0].preparation.mode == "none"  # graph images keep their size by default
    assert prepare_sample(d.samples()[0], d.memory).size == (8, 8)
    with pytest.raises(ds.DatasetError, match="empty"):
        ds.from_arrays([], [])
    with pytest.raises(ds.DatasetError, match="3 captions for 2 images"):
        ds.from_arrays(imgs, ["a", "b", "c"])


def test_save_and_reload_roundtrip(korra, tmp_path):
    d = ds.with_preparation(ds.scan_folder(korra, name="korra"), ds.Preparation(mode="crop", width=32, height=32))
    manifest = save_dataset(d, tmp_path / "out")
    assert len(manifest["files"]) == 4 and json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert not list((tmp_path / "out").rglob("*.tmp"))
    again = ds.scan_folder(tmp_path / "out")
    items = {os.path.basename(i.source): i for i in again.subsets[0].items}
    assert items["img_1.png"].caption == "korra, tag1" and items["img_1.png"].repeats == 10
    assert items["a.png"].repeats == 2 and (items["a.png"].width, items["a.png"].height) == (32, 32)


def test_dedupe_dataset_drops_mirrored_copy_but_never_deletes(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(base).resize((128, 128), Image.BICUBIC)
    img.save(tmp_path / "a.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).resize((96, 96)).save(tmp_path / "a_flipped_small.png")
    Image.fromarray(255 - base).resize((128, 128), Image.BICUBIC).save(tmp_path / "other.png")
    d = ds.scan_folder(tmp_path, on_missing_caption="empty")
    out, report = dedupe_dataset(d, threshold=8)
    kept = sorted(os.path.basename(i.source) for i in out.subsets[0].items)
    assert kept == ["a.png", "other.png"]
    assert [os.path.basename(x["key"]) for x in report.dropped] == ["a_flipped_small.png"]
    assert (tmp_path / "a_flipped_small.png").exists()


def test_dedupe_keeps_the_original_over_a_letterboxed_copy_on_a_bigger_canvas(tmp_path):
    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((128, 128), Image.BICUBIC)
    img.save(tmp_path / "original.png")
    canvas = Image.new("RGB", (176, 112), (0, 0, 0))  # 19,712 px of canvas (> 128²), only 96² of content
    canvas.paste(img.resize((96, 96), Image.LANCZOS), (40, 8))
    canvas.save(tmp_path / "letterboxed.png")
    d = ds.scan_folder(tmp_path, on_missing_caption="empty")
    out, report = dedupe_dataset(d, threshold=8, keep="largest")
    assert [os.path.basename(i.source) for i in out.subsets[0].items] == ["original.png"]
    assert os.path.basename(report.dropped[0]["key"]) == "letterboxed.png"


def test_attach_captions_by_image_or_by_item(korra):
    d = ds.add_downscaled_copy(ds.scan_folder(korra, name="k"), 64, 1)  # 4 images, 8 items
    by_image = ds.attach_captions(d, [f"cap {i}" for i in range(4)])
    assert [i.caption for i in by_image.subsets[0].items] == [i.caption for i in by_image.subsets[1].items]
    assert [i.caption for i in by_image.subsets[0].items] == ["cap 0", "cap 1", "cap 2", "cap 3"]
    by_item = ds.attach_captions(d, [f"c{i}" for i in range(8)])
    assert [i.caption for i in by_item.subsets[1].items] == ["c4", "c5", "c6", "c7"]
    with pytest.raises(ds.DatasetError, match="Got 3 captions; this dataset has 4 distinct images and 8 items"):
        ds.attach_captions(d, ["a", "b", "c"])


def test_folder_fingerprint_changes_with_files_not_with_hidden_backups(korra):
    before = ds.folder_fingerprint(korra)
    assert ds.folder_fingerprint(korra) == before
    (korra / "10_korra" / ".atelier_caption_backup").mkdir()
    (korra / "10_korra" / ".atelier_caption_backup" / "x.txt").write_text("old")
    assert ds.folder_fingerprint(korra) == before  # hidden folders do not count
    (korra / "10_korra" / "img_0.txt").write_text("korra, edited, longer")
    edited = ds.folder_fingerprint(korra)
    assert edited != before
    (korra / "2_korra_small" / "a.jpg").unlink()
    assert ds.folder_fingerprint(korra) != edited
    assert ds.folder_fingerprint(korra, recursive=False) == ds.folder_fingerprint(korra, recursive=False)
