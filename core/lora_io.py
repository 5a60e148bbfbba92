"""Reads and writes LoRA files: safetensors written atomically, legacy .pt/.ckpt/.bin read without unpickling code.

Nothing here knows ComfyUI; the caller picks the path (the nodes put it under ComfyUI's loras/ folder). Nothing
here builds a network either (trainers/network.py does). Tensors are kohya-format dicts as they come:
`<base>.lora_down.weight`, `<base>.lora_up.weight`, `<base>.alpha`, and whatever else a file holds (LyCORIS keys
are listed by lora_summary, not interpreted).
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .temps import remove_stale_temps, temp_path

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ACCEPTED_SUFFIXES = (SAFETENSORS,) + PICKLE_SUFFIXES
_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


class LoRAWriteError(OSError):
    """A LoRA file that could not be written; no file, partial or temporary, was left behind."""


def _prepared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each with its own storage (safetensors refuses shared ones)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"LoRA tensors must map str -> torch.Tensor; '{key}' is {type(t).__name__}.")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()  # a view of a tensor already listed (tied weights): save a copy
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_lora(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Writes a .safetensors LoRA through a temp file in the same folder and os.replace: all of it or nothing."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS:
        raise ValueError(f"LoRA files are written as safetensors; '{path}' should end in '.safetensors'.")
    write_safetensors(path, _prepared(tensors), metadata, what="LoRA file")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                      what: str = "file", before_replace: Callable[[], None] | None = None) -> None:
    """Writes tensors to `path` through a hidden temp file (fsync, then os.replace), removing dead writers' temps first.

    before_replace runs after the data is on disk and before it becomes visible: raising there (a cancel) leaves
    no file. Tensors must already be contiguous, each with its own storage.
    """
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} metadata '{key}' is {type(value).__name__}; safetensors metadata keys and values "
                            "must be str: convert it (str() or json.dumps()) before saving.")
    tmp = temp_path(path)  # hidden, so folder scans never list it; the pid lets a later save tell if it is dead
    try:
        remove_stale_temps(path.parent, path.name)  # what a killed earlier save of this same file left behind
        # O_EXCL: never reuse someone's file; mode 0o666 lets the umask decide, as for any new file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        save_file(tensors, str(tmp), metadata=dict(metadata))
        fd = os.open(tmp, os.O_RDWR)  # fsync needs a writable handle on Windows
        try:
            os.fsync(fd)  # on disk before the rename, so a crash leaves the old file or the new one
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.exists():
            tmp.unlink()
        if isinstance(e, (OSError, SafetensorError)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise LoRAWriteError(f"Could not write {what} '{path}': {reason}. Nothing was written; check that "
                                 "the folder exists, is writable and has free space.") from e
        raise


def _refusal(path: Path, e: Exception) -> ValueError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(f"Cannot load LoRA: refusing to unpickle '{path}' because it holds Python objects besides "
                      f"tensors ({first}). Unpickling can run arbitrary code: convert it to safetensors with a tool "
                      "you trust, then load the .safetensors file.")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise _refusal(path, e) from None
        raise ValueError(f"'{path}' is not a readable PyTorch file ({e}); the file is damaged or not a LoRA.") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"'{path}' is not a readable PyTorch file ({e}); the file is damaged or not a LoRA.") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style wrapper
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}; expected a dict of tensors (or "
                         "{'state_dict': {...}}).")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"'{path}' entry {key!r} is {type(value).__name__}; expected a dict of name -> tensor. "
                             "Convert the file to safetensors holding only the LoRA tensors.")
    return obj


def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA file; .pt/.ckpt/.bin are read with torch.load(weights_only=True), no metadata."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise ValueError(f"Cannot load LoRA '{path}': '{suffix or '(no extension)'}' is not a LoRA format; "
                         f"expected one of {', '.join(ACCEPTED_SUFFIXES)}.")
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file '{path}' does not exist (or is not a file).")
    if suffix == SAFETENSORS:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except SafetensorError as e:
            raise ValueError(f"'{path}' is not a readable safetensors file ({e}); the file is damaged or "
                             "incomplete: download or export it again.") from None
    else:
        tensors, metadata = _load_pickle(path), {}
    for key, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            checked = t.float() if t.element_size() == 1 else t  # float8 has no isfinite kernel
            if not bool(torch.isfinite(checked).all()):
                raise ValueError(f"LoRA file '{path}' has NaN or inf values in '{key}' (shape {tuple(t.shape)}); "
                                 "it was saved from a diverged run or is damaged: use an earlier checkpoint.")
    return tensors, metadata


def module_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """kohya base names present, from the `<base>.lora_down.weight` keys, sorted."""
    return sorted(k[: -len(_DOWN)] for k in tensors if k.endswith(_DOWN))


def _prefix(base: str) -> str:
    """'lora_unet_input_blocks_1' -> 'lora_unet', 'lora_te1_text_model' -> 'lora_te1'."""
    parts = base.split("_")
    return "_".join(parts[:2]) if base.startswith("lora_") and len(parts) > 1 else parts[0].split(".")[0]


def lora_summary(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """What a kohya-format LoRA holds, read from the tensors (metadata such as ss_network_dim is not trusted over them).

    has_conv is true when any adapted layer is a Conv2d (4-D lora_down), 1x1 included. A module without `.alpha`
    is listed in missing_alpha; loaders use alpha = rank for it (scale 1). other_keys are keys that are not
    lora_down / lora_up / alpha, e.g. LyCORIS `hada_w1_a` or `lokr_w1`, which this format does not describe.
    """
    bases = module_keys(tensors)
    ranks, prefixes = set(), {}
    for base in bases:
        ranks.add(int(tensors[base + _DOWN].shape[0]))
        prefixes[_prefix(base)] = prefixes.get(_prefix(base), 0) + 1
    alphas = {float(tensors[b + _ALPHA]) for b in bases if b + _ALPHA in tensors and tensors[b + _ALPHA].numel() == 1}
    return {
        "modules": len(bases),
        "ranks": sorted(ranks),
        "alphas": sorted(a for a in alphas if not math.isnan(a)),
        "prefixes": dict(sorted(prefixes.items())),
        "has_conv": any(tensors[b + _DOWN].ndim == 4 for b in bases),
        "missing_alpha": [b for b in bases if b + _ALPHA not in tensors],
        "other_keys": sorted(k for k in tensors if not k.endswith((_DOWN, _UP, _ALPHA))),
    }
