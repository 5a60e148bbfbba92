"""LoRA files on a real temp folder: atomic safetensors writes, safe legacy loading, NaN refusal, summaries."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from atelier.core.lora_format import module_bases
from atelier.core.lora_io import LoRAWriteError, load_lora, lora_summary, save_lora
from atelier.trainers.network import LoRANetwork, NetworkConfig


def tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"lora_unet_a_proj.lora_down.weight": torch.randn(4, 8, generator=gen),
            "lora_unet_a_proj.lora_up.weight": torch.randn(16, 4, generator=gen),
            "lora_unet_a_proj.alpha": torch.tensor(2.0)}


class Marker:
    """Unpickling this runs code (touches a file): what weights_only must refuse."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_save_load_round_trip_with_metadata_leaves_only_the_file(tmp_path):
    path = tmp_path / "style.safetensors"
    original = tensors()
    save_lora(path, original, {"ss_network_dim": "4", "atelier": '{"steps": 10}'})
    assert os.listdir(tmp_path) == ["style.safetensors"]
    loaded, metadata = load_lora(path)
    hashes = {k: metadata.pop(k) for k in ("sshs_model_hash", "sshs_legacy_hash")}  # kohya's, of the file itself
    assert metadata == {"ss_network_dim": "4", "atelier": '{"steps": 10}'} and len(hashes["sshs_model_hash"]) == 64
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in original)
    save_lora(path, tensors(1), {})  # overwriting replaces the file as a whole
    up = "lora_unet_a_proj.lora_up.weight"
    assert torch.equal(load_lora(path)[0][up], tensors(1)[up])
    assert os.listdir(tmp_path) == ["style.safetensors"]


def test_network_survives_a_file_round_trip(tmp_path):
    model = nn.ModuleDict({"blocks": nn.ModuleList([nn.Linear(8, 16), nn.Conv2d(4, 6, 3, padding=1)])})
    config = NetworkConfig(rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0)
    source = LoRANetwork({"lora_unet": model}, config, seed=1)
    with torch.no_grad():
        for m in source.modules_by_key.values():
            m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=torch.Generator().manual_seed(2)))
    save_lora(tmp_path / "net.safetensors", source.kohya_state_dict(torch.float32), {})
    target = LoRANetwork({"lora_unet": model}, config, seed=3)
    target.load_kohya_state_dict(load_lora(tmp_path / "net.safetensors")[0])
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_failed_save_names_the_path_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    target = blocker / "lora.safetensors"  # parent is a regular file: fails even as root
    with pytest.raises(LoRAWriteError, match="not_a_folder/lora.safetensors") as e:
        save_lora(target, tensors(), {})
    assert isinstance(e.value, OSError)
    occupied = tmp_path / "taken.safetensors"
    occupied.mkdir()  # the target name is a folder: the temp file gets written, then the rename fails
    with pytest.raises(LoRAWriteError, match="taken.safetensors"):
        save_lora(occupied, tensors(), {})
    assert sorted(os.listdir(tmp_path)) == ["not_a_folder", "taken.safetensors"]
    assert os.listdir(occupied) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_leaves_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(LoRAWriteError, match="ro/x.safetensors"):
            save_lora(folder / "x.safetensors", tensors(), {})
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_bad_metadata_tensors_and_suffix_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="'ss_network_dim' is int"):
        save_lora(tmp_path / "a.safetensors", tensors(), {"ss_network_dim": 4})
    with pytest.raises(TypeError, match="'x' is list"):
        save_lora(tmp_path / "a.safetensors", {"x": [1.0]}, {})
    with pytest.raises(ValueError, match="'.safetensors'"):
        save_lora(tmp_path / "a.pt", tensors(), {})
    assert os.listdir(tmp_path) == []


def test_tied_and_non_contiguous_tensors_save_without_touching_inputs(tmp_path):
    weight = torch.arange(12.0).reshape(3, 4)
    given = {"a.lora_down.weight": weight, "a.lora_up.weight": weight.t(), "b.lora_down.weight": weight[1:]}
    save_lora(tmp_path / "t.safetensors", given, {})
    loaded = load_lora(tmp_path / "t.safetensors")[0]
    assert all(torch.equal(loaded[k], given[k]) for k in given)
    assert not given["a.lora_up.weight"].is_contiguous()  # the caller's view is left as it was


def test_pt_with_plain_tensors_loads_and_state_dict_wrapper_unwraps(tmp_path):
    torch.save(tensors(), tmp_path / "plain.pt")
    torch.save({"state_dict": tensors()}, tmp_path / "wrapped.ckpt")
    for name in ("plain.pt", "wrapped.ckpt"):
        loaded, metadata = load_lora(tmp_path / name)
        assert metadata == {} and all(torch.equal(loaded[k], v) for k, v in tensors().items())


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"w": torch.zeros(2), "x": Marker(marker)}, f, protocol=2)
    torch.save({"w": torch.zeros(2), "x": Marker(marker)}, tmp_path / "evil.pt")
    for name in ("evil.pt", "evil.bin"):
        with pytest.raises(ValueError, match=f"refusing to unpickle '.*{name}'.*convert it to safetensors"):
            load_lora(tmp_path / name)
    assert not marker.exists()


def test_non_tensor_entries_unknown_suffix_and_damaged_files_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="'epoch' is int"):
        load_lora(tmp_path / "mixed.pt")
    (tmp_path / "x.onnx").write_bytes(b"0")
    with pytest.raises(ValueError, match=r"\.safetensors, \.pt, \.pth, \.ckpt, \.bin"):
        load_lora(tmp_path / "x.onnx")
    save_lora(tmp_path / "ok.safetensors", tensors(), {})
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors' is not a readable safetensors"):
        load_lora(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_lora(tmp_path / "gone.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_naming_the_first_bad_key(tmp_path, bad):
    t = tensors()
    t["lora_unet_a_proj.lora_up.weight"] = t["lora_unet_a_proj.lora_up.weight"].clone()
    t["lora_unet_a_proj.lora_up.weight"][3, 1] = bad
    t["lora_unet_z.lora_down.weight"] = torch.full((2, 2), bad)
    save_file(t, str(tmp_path / "bad.safetensors"))  # written by another tool: save_lora refuses NaN itself
    with pytest.raises(ValueError, match="NaN or inf values in 'lora_unet_a_proj.lora_up.weight'"):
        load_lora(tmp_path / "bad.safetensors")


def test_summary_and_module_bases_on_a_mixed_file():
    t = {
        "lora_unet_a.lora_down.weight": torch.zeros(4, 8), "lora_unet_a.lora_up.weight": torch.zeros(16, 4),
        "lora_unet_a.alpha": torch.tensor(2.0),
        "lora_unet_conv.lora_down.weight": torch.zeros(2, 4, 3, 3),
        "lora_unet_conv.lora_up.weight": torch.zeros(6, 2, 1, 1), "lora_unet_conv.alpha": torch.tensor(1.0),
        "lora_te1_text_model_q.lora_down.weight": torch.zeros(8, 8),
        "lora_te1_text_model_q.lora_up.weight": torch.zeros(8, 8),
        "lora_te2_text_model_q.lora_down.weight": torch.zeros(4, 8),
        "lora_te2_text_model_q.lora_up.weight": torch.zeros(8, 4), "lora_te2_text_model_q.alpha": torch.tensor(2.0),
        "lora_unet_b.hada_w1_a": torch.zeros(8, 4), "lora_unet_b.alpha": torch.tensor(4.0),
    }
    assert module_bases(t) == ["lora_te1_text_model_q", "lora_te2_text_model_q", "lora_unet_a", "lora_unet_conv"]
    assert lora_summary(t, {}) == {
        "modules": 4, "ranks": [2, 4, 8], "alphas": [1.0, 2.0],
        "prefixes": {"lora_te1": 1, "lora_te2": 1, "lora_unet": 2}, "has_conv": True,
        "missing_alpha": ["lora_te1_text_model_q"], "other_keys": ["lora_unet_b.hada_w1_a"],
    }
    linear_only = {k: v for k, v in t.items() if "conv" not in k}
    assert lora_summary(linear_only, {})["has_conv"] is False
