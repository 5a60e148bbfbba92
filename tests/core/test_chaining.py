"""Chaining a training run into the grids and LoRA tools: the run's files as one value, labelled by metadata."""

import pytest
import torch
from test_run import bias_run

from atelier.core.grid import Axis, draw_grid, grid_metadata, parse_grid_metadata, run_file_label
from atelier.core.lora_io import load_lora_metadata, save_lora
from atelier.trainers.loop import TrainConfig
from atelier.trainers.run import RunLoras, run_loras


def test_run_loras_lists_the_files_still_on_disk_in_save_order_with_their_numbers(tmp_path):
    config = TrainConfig(unet_lr=1e-2, epochs=3, batch_size=1, save_every_steps=4, save_every_epochs=1)
    run, _ = bias_run(tmp_path, config, keep_last=2)
    result = run.train()
    files = run_loras(result.saved, run.files.final, "atelier")
    assert files.final == "atelier/bias.safetensors"
    # 3 epochs of 4 steps: epoch saves 1, 2 (epoch 3 is the final file), step saves 4, 8; keep_last=2 keeps both
    assert files.intermediates == (("atelier/bias-step00000004.safetensors", "step", 4),
                                   ("atelier/bias-000001.safetensors", "epoch", 1),
                                   ("atelier/bias-step00000008.safetensors", "step", 8),
                                   ("atelier/bias-000002.safetensors", "epoch", 2))
    assert files.names()[-1] == files.final and files.kinds() == ["step", "epoch", "step", "epoch", "final"]

    pruned, _ = bias_run(tmp_path, config, name="few", keep_last=1)
    kept = run_loras(pruned.train().saved, pruned.files.final, "atelier")
    assert [n for n, _, _ in kept.intermediates] == ["atelier/few-step00000008.safetensors",
                                                     "atelier/few-000002.safetensors"]  # pruned files are left out


def test_run_file_labels_come_from_kohya_metadata():
    assert run_file_label("epoch", {"ss_epoch": "2", "ss_steps": "10"}, "atelier/x-000002.safetensors") == "epoch 2"
    assert run_file_label("step", {"ss_epoch": "1", "ss_steps": "100"}, "a/x-step00000100.safetensors") == "step 100"
    assert run_file_label("final", {"ss_epoch": "3"}, "atelier/x.safetensors") == "final (epoch 3)"
    assert run_file_label("final", {}, "atelier/x.safetensors") == "final"
    assert run_file_label("epoch", {"ss_epoch": "?"}, "atelier/x-000002.safetensors") == "x-000002"  # no number


def test_axis_value_labels_replace_file_stems_and_must_match_the_values():
    axis = Axis("lora", ("atelier/a_long_name-000001.safetensors", "atelier/a_long_name.safetensors"),
                value_labels=("epoch 1", "final (epoch 2)"))
    assert axis.labels() == ["epoch 1", "final (epoch 2)"]
    assert Axis("lora", ("atelier/x.safetensors",)).labels() == ["x"]
    with pytest.raises(ValueError, match="2 values but 1 value labels"):
        Axis("lora", ("a", "b"), value_labels=("epoch 1",))
    from PIL import Image

    cells = [[Image.new("RGB", (16, 16))] for _ in range(2)]
    assert draw_grid(cells, Axis("seed", (1,)), axis).height > 32  # the labels draw
    text = grid_metadata({"y": axis}, [])
    assert parse_grid_metadata(text)["axes"]["y"] == axis  # the labels are kept in the PNG, and read back
    assert '"value_labels"' not in grid_metadata({"x": Axis("seed", (1,))}, [])  # derived labels are not stored


def test_lora_metadata_is_read_from_the_header_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    save_lora(path, {"lora_unet_x.lora_down.weight": torch.ones(2, 4), "lora_unet_x.lora_up.weight": torch.ones(4, 2),
                     "lora_unet_x.alpha": torch.tensor(2.0)}, {"ss_epoch": "4"})
    assert load_lora_metadata(path)["ss_epoch"] == "4"
    assert load_lora_metadata(tmp_path / "old.pt") == {}  # pickled formats carry no metadata
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match="'bad.safetensors' is not a readable safetensors file"):
        load_lora_metadata(tmp_path / "bad.safetensors")


def test_run_loras_is_a_plain_value():
    files = RunLoras("atelier/x.safetensors")
    assert files.names() == ["atelier/x.safetensors"] and files.kinds() == ["final"]
