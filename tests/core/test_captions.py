"""Caption operations and sidecar writing on tiny real folders."""

import os
import subprocess

import pytest
from PIL import Image

from atelier.core import captions as cap
from atelier.core import dataset as ds
from atelier.core.caption_io import BACKUP_DIR, CaptionWriteError, write_captions
from atelier.core.paths import PathRefused

TAGS = ["1girl", "blonde hair", "long hair", "blue eyes", "smile", "(looking at viewer:1.2)", "flandre scarlet"]


def test_split_and_join():
    assert cap.split_tags(" a, b,, c ,") == ["a", "b", "c"]
    assert cap.split_tags("tag with \\, comma, b") == ["tag with \\, comma", "b"]
    assert cap.join_tags(["a", "b"]) == "a, b"


@pytest.mark.parametrize("patterns, mode, gone", [
    (["Blonde Hair", "blue eyes"], "exact", {"blonde hair", "blue eyes"}),
    (["*hair"], "wildcard", {"blonde hair", "long hair"}),
    ([r".*(hair|eyes)"], "regex", {"blonde hair", "long hair", "blue eyes"}),
])
def test_remove_tags(patterns, mode, gone):
    assert set(TAGS) - set(cap.remove_tags(TAGS, patterns, mode)) == gone


def test_bad_regex_and_mode():
    with pytest.raises(ValueError, match="Invalid regular expression '\\(unclosed'.*backslash"):
        cap.remove_tags(TAGS, ["(unclosed"], "regex")
    with pytest.raises(ValueError, match="exact, wildcard, regex"):
        cap.remove_tags(TAGS, ["x"], "fuzzy")


def test_replace_map():
    mapping = cap.parse_replace_map("1girl => woman\n# comment\nsmile = grin, happy\nflandre scarlet =>\n")
    assert mapping == [("1girl", "woman"), ("smile", "grin, happy"), ("flandre scarlet", "")]
    out = cap.replace_tags(TAGS, mapping)
    assert out[0] == "woman" and "grin" in out and "happy" in out and "flandre scarlet" not in out
    with pytest.raises(ValueError, match="line 1.*=>"):
        cap.parse_replace_map("no separator here")


def test_add_move_dedupe_sort_lowercase_strip():
    assert cap.add_tags(["a", "b"], ["B", "c"]) == ["a", "b", "c"]
    assert cap.add_tags(["a"], ["z"], "start") == ["z", "a"]
    assert cap.move_to_front(["x", "sks", "y"], ["sks", "elf"]) == ["sks", "elf", "x", "y"]
    assert cap.dedupe_tags(["a", "A", "b", "a"]) == ["a", "b"]
    assert cap.sort_tags(["trigger", "zeta", "Alpha"], keep_first=1) == ["trigger", "Alpha", "zeta"]
    assert cap.lowercase_tags(["Hatsune Miku"]) == ["hatsune miku"]
    assert cap.strip_weights(["(smile:1.2)", "((blue eyes))", "[hat]", "smile \\(happy\\)", "(tag:0.5) "]) == \
        ["smile", "blue eyes", "hat", "smile \\(happy\\)", "tag"]


def test_truncate_to_token_budget_keeps_first():
    count = lambda text: len(text.split())  # a real counter's contract: text -> tokens
    tags = ["trigger", "a b", "c d", "e f"]
    assert cap.truncate_to_budget(tags, count, budget=5, keep_first=1) == ["trigger", "a b", "c d"]
    assert cap.truncate_to_budget(tags, count, budget=1, keep_first=2) == ["trigger", "a b"]
    assert cap.approx_token_count("blonde hair, blue eyes") >= 5


def test_tag_frequencies():
    freq = cap.tag_frequencies(["a, b", "b, c", "B"])
    assert freq == [("b", 3), ("a", 1), ("c", 1)]


def make_set(folder, captions: dict[str, str | bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in captions.items():
        Image.new("RGB", (8, 8)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return ds.scan_folder(folder)


def test_six_guide_edits_as_one_pipeline(tmp_path):
    d = make_set(tmp_path / "elf", {
        "portrait_01": "1girl, blonde hair, long hair, green eyes, flandre scarlet, smile, upper body",
        "from_behind_02": "1girl, blonde hair, long hair, from behind, white background",
        "portrait_03": "1girl, blonde hair, pointy ears, lips, smile",
    })
    d, _ = cap.apply_to_dataset(d, lambda t: cap.remove_tags(t, ["*hair", "green eyes"], "wildcard"))  # 1 memorise
    d, _ = cap.apply_to_dataset(d, lambda t: cap.remove_tags(t, ["flandre scarlet"]))  # 2 unrelated tags
    d, _ = cap.apply_to_dataset(d, lambda t: cap.add_tags(t, ["portrait"]),  # 3 composition tag on a filtered subset
                                where=cap.CaptionFilter(filename_glob="portrait_*"))
    d, _ = cap.apply_to_dataset(d, lambda t: cap.add_tags(t, ["realistic"]))  # 4 absorb the 3D look
    d, _ = cap.apply_to_dataset(d, lambda t: cap.add_tags(t, ["nose", "lips"]),  # 5 where they apply
                                where=cap.CaptionFilter(lacks_tags=("from behind",)))
    d, diff = cap.apply_to_dataset(d, lambda t: cap.move_to_front(t, ["blonde elf"]))  # 6 trigger word first
    by_name = {os.path.basename(i.source): i.caption for i in d.subsets[0].items}
    assert by_name["portrait_01.png"] == "blonde elf, 1girl, smile, upper body, portrait, realistic, nose, lips"
    assert by_name["from_behind_02.png"] == "blonde elf, 1girl, from behind, white background, realistic"
    assert by_name["portrait_03.png"] == "blonde elf, 1girl, pointy ears, lips, smile, portrait, realistic, nose"
    assert "3 of 3 captions change" in diff and "+blonde elf" in diff


def test_dry_run_writes_nothing_then_write_with_backup(tmp_path):
    d = make_set(tmp_path / "set", {"a": "1girl, smile", "b": "cat"})
    edited, _ = cap.apply_to_dataset(d, lambda t: cap.replace_tags(t, [("1girl", "woman")]))
    report = write_captions(edited, allowed_roots=[tmp_path], dry_run=True)
    assert report.startswith("DRY RUN") and "1 of 2 captions change" in report and "+woman" in report
    assert (tmp_path / "set" / "a.txt").read_text() == "1girl, smile"
    report = write_captions(edited, allowed_roots=[tmp_path], dry_run=False)
    assert (tmp_path / "set" / "a.txt").read_text(encoding="utf-8") == "woman, smile"  # the map really changed it
    backups = list((tmp_path / "set" / BACKUP_DIR).rglob("a.txt"))
    assert len(backups) == 1 and backups[0].read_text() == "1girl, smile" and "backed up" in report
    assert not list((tmp_path / "set" / BACKUP_DIR).rglob("b.txt"))  # unchanged files are neither backed up nor written
    assert ds.scan_folder(tmp_path / "set").subsets[0].items[0].caption == "woman, smile"  # reload sees the edit


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbfa, b",  # UTF-8 BOM
    "a, b".encode("utf-16"),  # UTF-16 with BOM
    b"a,\r\nb\r\n",  # CRLF
])
def test_odd_encodings_are_rewritten_as_plain_utf8(tmp_path, raw):
    d = make_set(tmp_path / "s", {"x": raw})
    edited, _ = cap.apply_to_dataset(d, lambda t: cap.add_tags(t, ["ñandú (bird), 東方"]))
    write_captions(edited, allowed_roots=[tmp_path], dry_run=False, backup=True)
    assert (tmp_path / "s" / "x.txt").read_bytes() == "a, b, ñandú (bird), 東方".encode("utf-8")
    assert list((tmp_path / "s" / BACKUP_DIR).rglob("x.txt"))[0].read_bytes() == raw  # original bytes kept


def test_cp1252_captions_with_declared_encoding(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    (folder / "x.txt").write_bytes("café, smile".encode("cp1252"))
    d = ds.scan_folder(folder, caption_encoding="cp1252")
    edited, _ = cap.apply_to_dataset(d, lambda t: cap.remove_tags(t, ["smile"]))
    write_captions(edited, allowed_roots=[tmp_path], dry_run=False, encoding="cp1252")
    assert (folder / "x.txt").read_text(encoding="utf-8") == "café"


def test_nul_bytes_caption_is_a_clear_error(tmp_path):
    with pytest.raises(ds.CaptionError, match="NUL bytes"):
        make_set(tmp_path / "s", {"x": b"a\x00b"})


def make_read_only(folder):
    """chattr +i blocks even root; chmod works for other users. Skips when neither can make the folder read-only."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        os.chmod(folder, 0o755)
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    return lambda: os.chmod(folder, 0o755)


def test_read_only_folder_is_a_clear_error_and_nothing_changes(tmp_path):
    d = make_set(tmp_path / "ro", {"a": "x", "b": "y"})
    edited, _ = cap.apply_to_dataset(d, lambda t: cap.add_tags(t, ["new"]))
    undo = make_read_only(tmp_path / "ro")
    try:
        with pytest.raises(CaptionWriteError, match=r"'.*ro' is not writable.*nothing was written"):
            write_captions(edited, allowed_roots=[tmp_path], dry_run=False)
    finally:
        undo()
    assert (tmp_path / "ro" / "a.txt").read_text() == "x" and (tmp_path / "ro" / "b.txt").read_text() == "y"
    assert not (tmp_path / "ro" / BACKUP_DIR).exists()


def test_targets_outside_allowed_roots_are_refused(tmp_path):
    d = make_set(tmp_path / "elsewhere", {"a": "x"})
    edited, _ = cap.apply_to_dataset(d, lambda t: ["y"])
    with pytest.raises(PathRefused, match="outside the allowed roots"):
        write_captions(edited, allowed_roots=[tmp_path / "input"], dry_run=False)
    assert (tmp_path / "elsewhere" / "a.txt").read_text() == "x"


def test_new_caption_set_under_output(tmp_path):
    d = make_set(tmp_path / "in" / "korra", {"a": "x"})
    edited, _ = cap.apply_to_dataset(d, lambda t: ["y"])
    out = tmp_path / "output" / "captions_v2"
    write_captions(edited, allowed_roots=[], out_dir=out, dry_run=False)
    assert (out / "korra" / "a.txt").read_text() == "y" and (tmp_path / "in" / "korra" / "a.txt").read_text() == "x"
