"""Copy-machine pieces without a host: kohya's addnet hashes of a saved LoRA, the shipped file's copier record, and
the copier set turned into regularisation."""

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import save

from atelier.core.dataset import DatasetError, Subset, as_regularization, from_arrays
from atelier.core.lora_io import addnet_hash_file, addnet_hashes, load_lora_metadata, save_lora
from atelier.core.lora_meta import copy_machine_metadata


def big_lora(seed=0):
    gen = torch.Generator().manual_seed(seed)  # 2 MiB of factors, so the legacy window (64 KiB at 1 MiB) is data
    return {"lora_unet_a_proj.lora_down.weight": torch.randn(512, 512, generator=gen),
            "lora_unet_a_proj.lora_up.weight": torch.randn(512, 512, generator=gen),
            "lora_unet_a_proj.alpha": torch.tensor(256.0)}


def test_saved_hashes_equal_an_independent_computation_on_the_file_bytes(tmp_path):
    path = tmp_path / "copier.safetensors"
    save_lora(path, big_lora(), {"ss_network_dim": "512", "ss_output_name": "copier", "atelier_note": "x" * 300})
    meta = load_lora_metadata(path)
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[header:]).hexdigest()  # everything after the header
    assert meta["sshs_model_hash"] == addnet_hash_file(path)
    # legacy: kohya serialises with the ss_* metadata only, then hashes 64 KiB at 1 MiB
    kohya_bytes = save(big_lora(), metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(kohya_bytes[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_legacy_hash"] != hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]  # header moved it


def test_user_metadata_does_not_change_the_hashes_but_the_weights_do():
    base = addnet_hashes(big_lora(), {"ss_network_dim": "512"})
    assert addnet_hashes(big_lora(), {"ss_network_dim": "512", "modelspec.title": "renamed"}) == base
    assert addnet_hashes(big_lora(1), {"ss_network_dim": "512"})[0] != base[0]
    longer = {"ss_network_dim": "512", "ss_training_comment": "x" * 100}  # ss_ keys move the legacy window
    assert addnet_hashes(big_lora(), longer)[1] != base[1] and addnet_hashes(big_lora(), longer)[0] == base[0]


def test_addnet_hash_of_a_hand_made_kohya_layout_file(tmp_path):
    payload = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = json.dumps({"__metadata__": {"ss_network_dim": "2"},
                         "w.lora_down.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes
    path = tmp_path / "hand.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    assert addnet_hash_file(path) == hashlib.sha256(payload).hexdigest()
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="'short.safetensors' is not a safetensors file"):
        addnet_hash_file(tmp_path / "short.safetensors")


def test_copy_machine_metadata_lists_every_copier_and_the_checkpoint():
    copier = {"name": "atelier/copier.safetensors", "strength": 1.0, "sha256": "ab" * 32, "autov2": "abababab",
              "addnet_hash": "cd" * 32, "ss_output_name": "copier", "source": "run"}
    meta = copy_machine_metadata("tiny.safetensors", [copier, {**copier, "name": "b.safetensors", "strength": 0.5}])
    listed = json.loads(meta["atelier_base_weights"])
    assert [c["name"] for c in listed] == ["atelier/copier.safetensors", "b.safetensors"]
    assert listed[0] == copier and listed[1]["strength"] == 0.5
    assert json.loads(meta["atelier_objective"])["method"] == "copy_machine"
    assert meta["ss_training_comment"] == ("copy-machine: trained on tiny.safetensors + atelier/copier.safetensors @ 1 "
                                           "+ b.safetensors @ 0.5; use on tiny.safetensors alone")
    assert all(isinstance(v, str) for v in meta.values())


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_copy_machine_metadata_refuses_a_non_finite_strength_and_no_copier(strength):
    with pytest.raises(ValueError, match=r"Copier 'c.safetensors' has strength (nan|inf)"):
        copy_machine_metadata("tiny", [{"name": "c.safetensors", "strength": strength}])
    with pytest.raises(ValueError, match="needs at least one copier"):
        copy_machine_metadata("tiny", [])


def test_copier_set_becomes_regularisation_with_its_weight_and_repeats():
    import numpy as np

    images = [np.zeros((8, 8, 3), dtype=np.float32), np.ones((8, 8, 3), dtype=np.float32)]
    reg = as_regularization(from_arrays(images, ["a", "b"], name="own"), 0.75, 3)
    (subset,) = reg.subsets
    assert subset.role == "regularization" and subset.prior_loss_weight == 0.75
    assert [it.repeats for it in subset.items] == [3, 3] and subset.samples_per_epoch == 6
    empty = from_arrays(images, ["a", "b"])
    empty = type(empty)((Subset("own", "train", ()),))
    with pytest.raises(DatasetError, match="regularization set is empty"):
        as_regularization(empty, 1.0, 1)
    assert [it.caption for it in subset.items] == ["a", "b"]
