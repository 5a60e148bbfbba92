"""The path policy at open time: every file read or written stays inside its root, symlinks included, and a
canary outside the root is never read, copied, changed or deleted."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.core import dataset as ds
from atelier.core.caption_io import BACKUP_DIR, write_captions
from atelier.core.captions import apply_to_dataset
from atelier.core.paths import (MAX_NAME_CHARS, FileTooLarge, PathRefused, Root, atomic_write_bytes,
                                make_folder_inside, open_inside, read_bytes_inside, safe_name, shown, verify_fd)
from atelier.trainers.checkpoint import ResumeMismatch, read_state_config
from atelier.trainers.run import epoch_file, prune_epoch_files

SECRET = "root:x:0:0:canary-secret"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path):
    """input/ds with two images and captions, and an outside folder with a canary file."""
    inp, outside = tmp_path / "input", tmp_path / "outside"
    (inp / "ds").mkdir(parents=True)
    outside.mkdir()
    canary = outside / "passwd"
    canary.write_text(SECRET)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(inp / "ds" / f"{name}.png")
        (inp / "ds" / f"{name}.txt").write_text(f"{name} tag")
    return Root("input", inp), canary


def test_open_inside_refuses_a_symlink_leading_out(tree):
    root, canary = tree
    link = root.path / "ds" / "leak.txt"
    link.symlink_to(canary)
    with pytest.raises(PathRefused, match="outside the allowed roots") as e:
        open_inside(link, [root])
    assert str(canary.parent) not in str(e.value) and "input/ds/leak.txt" in str(e.value)


def test_open_inside_follows_a_symlink_that_stays_inside(tree):
    root, _ = tree
    (root.path / "ds" / "alias.txt").symlink_to(root.path / "ds" / "a.txt")
    assert read_bytes_inside(root.path / "ds" / "alias.txt", [root]) == b"a tag"


def test_a_handle_that_is_not_the_checked_file_is_refused(tree):
    root, canary = tree
    fd = os.open(canary, os.O_RDONLY)  # what a swapped-in link would have opened
    try:
        with pytest.raises(PathRefused, match="changed while it was being opened"):
            verify_fd(fd, os.path.realpath(root.path / "ds" / "a.txt"))
    finally:
        os.close(fd)


def test_read_bytes_inside_stops_at_the_limit(tree):
    root, _ = tree
    (root.path / "ds" / "big.txt").write_bytes(b"x" * 5000)
    with pytest.raises(FileTooLarge, match="larger than 4,096 bytes"):
        read_bytes_inside(root.path / "ds" / "big.txt", [root], "caption file", limit=4096)


def test_make_folder_inside_refuses_a_planted_symlinked_folder(tree, tmp_path):
    root, canary = tree
    (root.path / "ds" / BACKUP_DIR).symlink_to(canary.parent, target_is_directory=True)
    with pytest.raises(PathRefused):
        make_folder_inside(root.path / "ds" / BACKUP_DIR / "stamp", [root], "backup folder")
    assert sorted(p.name for p in canary.parent.iterdir()) == ["passwd"]


def test_sidecar_symlink_out_of_root_is_skipped_and_never_read(tree):
    root, canary = tree
    os.unlink(root.path / "ds" / "a.txt")
    (root.path / "ds" / "a.txt").symlink_to(canary)
    loaded = ds.scan_folder(root.path / "ds", root)
    captions = [it.caption for s in loaded.subsets for it in s.items]
    report = ds.describe(loaded)
    assert captions == ["b tag"] and SECRET not in report and "outside the allowed roots" in report
    assert loaded.subsets[0].folders == ("input/ds",)  # no server path in what training metadata records


def test_image_symlink_out_of_root_is_skipped(tree, tmp_path):
    root, _ = tree
    Image.new("RGB", (16, 16)).save(tmp_path / "outside" / "x.png")
    (root.path / "ds" / "x.png").symlink_to(tmp_path / "outside" / "x.png")
    loaded = ds.scan_folder(root.path / "ds", root)
    assert [os.path.basename(it.source) for it in loaded.subsets[0].items] == ["a.png", "b.png"]
    assert any("x.png" in sk.path for sk in loaded.skipped)


def test_huge_sidecar_is_skipped_with_the_limit_named(tree):
    root, _ = tree
    (root.path / "ds" / "a.txt").write_bytes(b"tag, " * (ds.MAX_CAPTION_BYTES // 4))
    loaded = ds.scan_folder(root.path / "ds", root)
    assert len(loaded.subsets[0].items) == 1 and "a.txt is 100,005 bytes" in ds.describe(loaded)


def test_write_captions_refuses_a_caption_linked_outside_and_leaks_nothing(tree):
    root, canary = tree
    before = digest(canary)
    loaded = ds.scan_folder(root.path / "ds", root)
    os.unlink(root.path / "ds" / "a.txt")
    (root.path / "ds" / "a.txt").symlink_to(canary)  # swapped after the scan
    edited, _ = apply_to_dataset(loaded, lambda tags: tags + ["new"])
    for dry_run in (True, False):
        with pytest.raises(PathRefused) as e:
            write_captions(edited, allowed_roots=[root], dry_run=dry_run)
        assert SECRET not in str(e.value) and str(canary.parent) not in str(e.value)
    assert digest(canary) == before and not (root.path / "ds" / BACKUP_DIR).exists()
    assert (root.path / "ds" / "b.txt").read_text() == "b tag"  # refused before anything was written


def test_write_captions_backs_up_the_bytes_it_read_with_their_mode(tree):
    root, _ = tree
    os.chmod(root.path / "ds" / "a.txt", 0o640)
    loaded = ds.scan_folder(root.path / "ds", root)
    edited, _ = apply_to_dataset(loaded, lambda tags: tags + ["new"])
    report = write_captions(edited, allowed_roots=[root], dry_run=False)
    backup = next((root.path / "ds" / BACKUP_DIR).rglob("a.txt"))
    assert backup.read_text() == "a tag" and (root.path / "ds" / "a.txt").read_text() == "a tag, new"
    assert stat.S_IMODE(os.stat(root.path / "ds" / "a.txt").st_mode) == 0o640  # the user's mode is kept
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o640
    assert str(root.path) not in report and "a.txt: +new" in report


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, mask, expected):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.bin").st_mode) == expected


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (tmp_path / "link.txt").symlink_to(target)
    atomic_write_bytes(tmp_path / "link.txt", b"new")
    assert target.read_text() == "keep" and not (tmp_path / "link.txt").is_symlink()


@pytest.mark.parametrize("bad", ["*", "a*", "x?", "[ab]", "a\u202eb", "a\u200bb", "esc\x1bname", "CON", "nul.txt",
                                 "trailing.", "x" * (MAX_NAME_CHARS + 1), "a|b", 'a"b'])
def test_safe_name_refuses_glob_control_reserved_and_long_names(bad):
    with pytest.raises(PathRefused) as e:
        safe_name(bad, "output_name")
    assert len(str(e.value)) < 400  # a 5,000-character name is not echoed back whole


@pytest.mark.parametrize("good", ["my_lora", "Ké v2 (final)", "a.b-c", "x" * MAX_NAME_CHARS])
def test_safe_name_accepts_plain_names(good):
    assert safe_name(good) == good


def test_prune_deletes_only_this_runs_epoch_files(tmp_path):
    final = tmp_path / "run.safetensors"
    for e in (1, 2, 3):
        epoch_file(final, e).write_bytes(b"x")
    keep = ["victim-000001.safetensors", "run-00001.safetensors", "run-0000012.safetensors", "run-abcdef.safetensors",
            "run-000001.safetensors.bak", "xrun-000001.safetensors"]
    for name in keep:
        (tmp_path / name).write_bytes(b"keep")
    prune_epoch_files(final, keep_last=1)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(keep + ["run-000003.safetensors"])


def test_prune_with_a_glob_name_deletes_nothing_else(tmp_path):
    (tmp_path / "victimrun-000001.safetensors").write_bytes(b"keep")
    (tmp_path / "victimrun-000002.safetensors").write_bytes(b"keep")
    prune_epoch_files(tmp_path / "*.safetensors", keep_last=1)  # even if such a name got through
    assert len(list(tmp_path.iterdir())) == 2


def test_resume_state_file_linked_outside_is_refused(tmp_path):
    state = tmp_path / "train_state" / "run"
    state.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"config": {}, "step": 1, "epoch": 0, "batch_in_epoch": 0}))
    (state / "state.json").symlink_to(outside)
    with pytest.raises(ResumeMismatch, match="outside the allowed roots"):
        read_state_config(state)


@pytest.mark.parametrize("content, words", [("[1, 2]", "not an object"), ("{not json", "not valid JSON"),
                                            ('{"config": {}}', "no valid 'step'")])
def test_damaged_resume_state_gets_a_clear_error(tmp_path, content, words):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text(content)
    with pytest.raises(ResumeMismatch, match=words):
        read_state_config(tmp_path / "run")


def test_shown_never_returns_an_absolute_path(tmp_path):
    root = Root("input", tmp_path / "input")
    assert shown(tmp_path / "input" / "ds" / "a.png", [root]) == "input/ds/a.png"
    assert shown(tmp_path / "input", [root]) == "input"
    assert shown("/somewhere/else/secret.txt", [root]) == "secret.txt"


def test_state_tensors_are_read_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    from atelier.trainers.checkpoint import _state_tensors

    (tmp_path / "run").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "run" / "lora.safetensors"))
    assert torch.equal(_state_tensors(tmp_path / "run", "lora.safetensors")["w"], torch.ones(2))
    (tmp_path / "run" / "optimizer.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ResumeMismatch, match="optimizer.safetensors' is not a readable safetensors"):
        _state_tensors(tmp_path / "run", "optimizer.safetensors")
