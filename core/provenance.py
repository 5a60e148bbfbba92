"""Where a model came from: the checkpoint a graph loaded it from, and the hashes other tools compute for that file.

Nothing here knows ComfyUI. A ComfyUI 0.3.64 MODEL does not remember its file (CheckpointLoaderSimple hands the
path to comfy.sd.load_checkpoint_guess_config, which keeps neither path nor name on the ModelPatcher), so the name
comes from the queued prompt: from the node's `model` input, links are followed upstream through nodes that pass a
`model` through (LoraLoader, ModelSamplingDiscrete, ...) to the loader that read the file (`ckpt_name` of
CheckpointLoaderSimple and friends, `unet_name` of UNETLoader). LoRA names met on the way are recorded. A chain
that ends anywhere else (a merge of two models, a name that is itself a link) gives no name: callers then say
"unknown" and fall back to the model's class name.

Hashes follow the tools that read them (kohya-ss sd-scripts library/train_util.py):
- `sha256`: of the whole file; A1111 and Civitai show its first 10 hex digits ("AutoV2"); kohya's
  ss_new_sd_model_hash;
- `legacy`: A1111's old "model hash", sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits; kohya's
  ss_sd_model_hash.
A file is hashed once per (real path, size, mtime): in memory, and in a JSON cache file when the caller names one
(keyed by a hash of the path, so the cache never shows a server path).
"""

from __future__ import annotations

import torch

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .paths import NONE, FileTooLarge, PathRefused, Root, atomic_write_bytes, open_resolved, read_bytes_inside

# inputs holding a model file's name in the loaders -> the model folder type it is listed in
MODEL_FILE_INPUTS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models"}
_LORA_INPUT = re.compile(r"^lora(_name|_\d+)?$")  # LoraLoader lora_name; Atelier's merge nodes lora_1..lora_4
_STRENGTH_INPUT = re.compile(r"^strength(_model|_\d+)?$")
MAX_HOPS = 64  # a prompt is a DAG; this bounds the walk even in a malformed one
CHUNK = 8 << 20  # bytes hashed between two progress / cancel checks
CACHE_ENTRIES = 1000  # newest hashes kept in the cache file
_hashes: dict[str, dict] = {}  # in-memory cache for this process: key -> {"sha256", "legacy"}


@dataclass(frozen=True)
class BaseModel:
    """What a LoRA was trained on, or a grid rendered with: the file when known, else the model's class and a
    fingerprint of its weights; and the patches (merged LoRAs, ...) the MODEL carried on top."""

    model_class: str  # e.g. "BaseModel", "SDXL": the fallback name when the file is unknown
    family: str = ""  # "SD1.x", "SD2.x", "SDXL", ...
    v_prediction: bool = False
    file: str | None = None  # the name as listed in the model folder (may hold a sub-folder), never a server path
    folder: str | None = None  # "checkpoints" or "diffusion_models"
    sha256: str = ""
    legacy_hash: str = ""
    fingerprint: str = ""  # sampled weights of the unpatched model (core-independent identity, not a file hash)
    chain: tuple = ()  # nodes between the loader and the consumer, with LoRA names (model_source's "chain")
    patches: dict = field(default_factory=dict)  # {"patched_keys": n, "patches": m} when the MODEL carried any
    why: str = ""  # why the file is unknown

    @property
    def name(self) -> str:
        """The file's name without folders (kohya's ss_sd_model_name), else the model class."""
        return self.file.rsplit("/", 1)[-1] if self.file else self.model_class

    def record(self) -> dict:
        """A JSON-able description for metadata: name, how it was found, hashes, fingerprint, chain, patches."""
        out = {"name": self.name, "file": self.file, "folder": self.folder, "family": self.family,
               "v_prediction": self.v_prediction, "fingerprint": self.fingerprint}
        if self.file:
            out.update(sha256=self.sha256, autov2=autov2(self.sha256))
        else:
            out["unknown_because"] = self.why or "no checkpoint loader was found upstream"
        if self.chain:
            out["chain"] = list(self.chain)
        if self.patches:
            out["patches"] = self.patches
        return out


def _plain_name(value: str) -> str:
    """A listed file name as recorded: '/' separators, and never an absolute path (only its file name)."""
    value = value.replace("\\", "/")
    return os.path.basename(value) if os.path.isabs(value) or re.match(r"^[A-Za-z]:", value) else value


def _is_link(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], int)


def model_source(prompt: dict | None, node_id, input_name: str = "model") -> dict:
    """What fed `input_name` of node `node_id` in an API-format prompt: {"file": listed name or None, "folder":
    "checkpoints" / "diffusion_models", "loader": class of the node that read it, "chain": [{"node": class, "lora":
    name, "strength": s}, ...] from the loader down to this node, "why": why no file was found (when none)}."""
    out = {"file": None, "folder": None, "loader": None, "chain": [], "why": ""}
    if not isinstance(prompt, dict) or str(node_id) not in prompt:
        out["why"] = "the queued prompt was not available"
        return out
    link = (prompt[str(node_id)].get("inputs") or {}).get(input_name)
    chain = []
    for _ in range(MAX_HOPS):
        if not _is_link(link) or str(link[0]) not in prompt:
            out["why"] = f"'{input_name}' is not linked to a node of the prompt"
            break
        node = prompt[str(link[0])]
        cls, inputs = str(node.get("class_type", "?")), node.get("inputs") or {}
        names = {k: v for k, v in inputs.items() if k in MODEL_FILE_INPUTS}
        if names:
            key, value = next(iter(names.items()))
            if isinstance(value, str) and value:
                out.update(file=_plain_name(value), folder=MODEL_FILE_INPUTS[key], loader=cls)
            else:
                out["why"] = f"{cls}'s {key} is not a plain name"
            break
        entry = {"node": cls}
        loras = [_plain_name(v) for k, v in sorted(inputs.items()) if _LORA_INPUT.match(k) and isinstance(v, str)
                 and v not in ("", NONE, "None")]
        strengths = [v for k, v in sorted(inputs.items()) if _STRENGTH_INPUT.match(k) and isinstance(v, (int, float))]
        if loras:
            entry["loras"] = loras
            entry["strengths"] = strengths[: len(loras)]
        chain.append(entry)
        link = inputs.get("model")
        if not _is_link(link):
            out["why"] = f"{cls} has no single 'model' input to follow (e.g. a merge of two models)"
            break
    else:
        out["why"] = f"more than {MAX_HOPS} nodes upstream"
    out["chain"] = list(reversed(chain))  # from the loader towards this node, as the model flowed
    return out


def _cache_key(real: Path) -> str:
    st = os.stat(real)
    return hashlib.sha256(f"{os.fspath(real)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _read_cache(cache_file: Path | None) -> dict:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        data = json.loads(read_bytes_inside(cache_file, [Root("cache", cache_file.parent)], "hash cache",
                                            limit=16 << 20))
    except (OSError, ValueError, PathRefused, FileTooLarge):
        return {}  # a damaged or foreign cache file is ignored and rewritten, never trusted
    return data if isinstance(data, dict) else {}


def file_hashes(real: str | os.PathLike, *, cache_file: Path | None = None,
                tick: Callable[[], None] | None = None) -> dict[str, str]:
    """{"sha256": whole-file hex, "legacy": A1111's old 8-hex model hash} of a file given by its real path, hashed
    once per (path, size, mtime); tick() runs between 8 MiB chunks (a host's cancel check)."""
    real = Path(real)
    key = _cache_key(real)
    if key in _hashes:
        return dict(_hashes[key])
    cached = _read_cache(cache_file).get(key)
    if isinstance(cached, dict) and isinstance(cached.get("sha256"), str) and isinstance(cached.get("legacy"), str):
        _hashes[key] = {"sha256": cached["sha256"], "legacy": cached["legacy"]}
        return dict(_hashes[key])
    whole, legacy = hashlib.sha256(), hashlib.sha256()
    with os.fdopen(open_resolved(real, "model file"), "rb") as f:  # the checked real path, no swapped link
        f.seek(0x100000)
        legacy.update(f.read(0x10000))  # A1111's old hash: 64 KiB at 1 MiB
        f.seek(0)
        for block in iter(lambda: f.read(CHUNK), b""):
            whole.update(block)
            if tick is not None:
                tick()
    result = {"sha256": whole.hexdigest(), "legacy": legacy.hexdigest()[:8]}
    _hashes[key] = result
    if cache_file is not None:
        data = _read_cache(cache_file)
        data[key] = result
        keep = dict(list(data.items())[-CACHE_ENTRIES:])
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_file, json.dumps(keep).encode())
    return dict(result)


def autov2(sha256: str) -> str:
    """Civitai's / A1111's short model hash: the first 10 hex digits of the file's sha256."""
    return sha256[:10]


def hash_tensor(h, tensor) -> None:
    """Feeds a tensor's shape, dtype and exact bytes (any dtype, bf16 included) into the running hash `h`."""
    t = tensor.detach().cpu().contiguous().flatten()
    h.update(f"{tuple(tensor.shape)}{t.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())
