"""A run's identity (trainers/reuse.py): what makes a finished file reusable, and what makes a run train again."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from atelier.core.dataset import Preparation, from_arrays, scan_folder, with_preparation
from atelier.trainers.reuse import (FINISHED_KEY, IDENTITY_KEY, RunIdentity, data_digest, differences, recorded,
                                    saved_losses)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"elf, pose {i}")
    return root


def digest_of(folder, **kw):
    return data_digest(scan_folder(folder, folder, **kw))


def test_the_data_digest_is_stable_and_changes_with_every_input_of_training(folder):
    same = digest_of(folder)
    assert digest_of(folder) == same
    assert digest_of(folder, repeats=3) != same
    dataset = scan_folder(folder, folder)
    assert data_digest(with_preparation(dataset, Preparation(width=256, height=256))) != same
    (folder / "1.txt").write_text("elf, pose 9")
    assert digest_of(folder) != same
    (folder / "1.txt").write_text("elf, pose 1")
    assert digest_of(folder) == same
    pixels = np.asarray(Image.open(folder / "2.png")).copy()
    pixels[0, 0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(pixels).save(folder / "2.png")
    assert digest_of(folder) != same


def test_graph_images_are_identified_by_their_pixels():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[3, 3, 1] = 1
    assert data_digest(from_arrays([a], ["x"])) == data_digest(from_arrays([a.copy()], ["x"]))
    assert data_digest(from_arrays([a], ["x"])) != data_digest(from_arrays([b], ["x"]))


def test_the_digest_checks_cancel_once_per_image(folder):
    ticks = []
    data_digest(scan_folder(folder, folder), tick=lambda: ticks.append(1))
    assert len(ticks) == 3

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data_digest(scan_folder(folder, folder), tick=cancel)


def identity(**changes):
    parts = dict(config={"unet_lr": 1e-4, "seed": 0}, network={"rank": 4}, data="d" * 64, base={"sha256": "ab"},
                 start=None)
    parts.update(changes)
    return RunIdentity.of(**parts)


def test_a_finished_file_of_the_same_identity_is_reusable_and_every_change_is_named():
    ident = identity()
    assert differences(ident, ident.metadata(finished=True)) == []
    assert differences(identity(), ident.metadata(finished=True)) == []  # recomputed: the same digests
    assert differences(ident, ident.metadata(finished=False)) == [
        "its run did not finish (it was stopped or is an intermediate save)"]
    assert "the training settings changed" in differences(identity(config={"unet_lr": 2e-4, "seed": 0}),
                                                          ident.metadata(True))[0]
    assert "the training settings changed" in differences(identity(start={"sha256": "cd"}), ident.metadata(True))[0]
    assert "the dataset" in differences(identity(data="e" * 64), ident.metadata(True))[0]
    both = differences(identity(data="e" * 64, base={"sha256": "ff"}), ident.metadata(True))[0]
    assert "the dataset" in both and "the base model" in both


@pytest.mark.parametrize("meta", [{}, {IDENTITY_KEY: "not json", FINISHED_KEY: "true"},
                                  {IDENTITY_KEY: json.dumps(["a"]), FINISHED_KEY: "true"},
                                  {IDENTITY_KEY: json.dumps({"settings": "a", "data": 3, "base": "c"}),
                                   FINISHED_KEY: "true"}])
def test_files_without_a_valid_record_are_never_reused(meta):
    assert recorded(meta) == (None, False)
    assert differences(identity(), meta) == [
        "it records no run identity (written by another tool or an older Atelier)"]


def write_state(folder, parts, losses):
    folder.mkdir()
    state = {"step": len(losses), "epoch": 1, "batch_in_epoch": 0, "losses": losses, "config": {}, IDENTITY_KEY: parts}
    (folder / "state.json").write_text(json.dumps(state))


def test_a_reused_file_shows_its_own_runs_losses_never_another_runs(tmp_path):
    ident = identity()
    write_state(tmp_path / "mine", ident.parts(), [0.5, 0.25])
    write_state(tmp_path / "other", identity(data="e" * 64).parts(), [9.0])
    assert saved_losses(tmp_path / "mine", ident) == [0.5, 0.25]
    assert saved_losses(tmp_path / "other", ident) == []
    assert saved_losses(tmp_path / "missing", ident) == []
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{")
    assert saved_losses(tmp_path / "broken", ident) == []


def test_the_identity_ignores_nothing_it_is_given():
    fields = {f.name for f in dataclasses.fields(RunIdentity)}
    assert fields == {"settings", "data", "base"}
    assert len({identity().short(), identity(network={"rank": 8}).short(), identity(base={"sha256": "x"}).short()}) == 3
