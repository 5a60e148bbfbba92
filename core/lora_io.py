"""Reads and writes LoRA files: safetensors written atomically, legacy .pt/.ckpt/.bin read without unpickling code.

Nothing here knows ComfyUI; the caller picks the path (the nodes put it under ComfyUI's loras/ folder). Nothing
here builds a network either (trainers/network.py does). Tensors are kohya-format dicts (core/lora_format.py
spells the keys) as they come, with whatever else a file holds (LyCORIS keys are listed by lora_summary, not
interpreted).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file

from .lora_format import ALPHA, DOWN, MID, PAIR_SUFFIXES, UP, base_prefix, module_bases, pair_of
from .paths import file_mode_for, open_resolved
from .temps import remove_stale_temps, temp_path

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ACCEPTED_SUFFIXES = (SAFETENSORS,) + PICKLE_SUFFIXES


class LoRAWriteError(OSError):
    """A LoRA file that could not be written; no file, partial or temporary, was left behind."""


def non_finite_count(t: torch.Tensor) -> int:
    """How many NaN / inf values a tensor holds (0 for integer and bool tensors)."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    checked = t.float() if t.element_size() == 1 else t  # float8 has no isfinite kernel
    return int((~torch.isfinite(checked)).sum())


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


# kohya-ss sd-scripts (library/train_util.py precalculate_safetensors_hashes) writes these two hashes of the LoRA
# file itself into its header; A1111's Lora extension shows sshs_model_hash (first 12 hex) as the LoRA's hash.
ADDNET_HASH_KEY = "sshs_model_hash"
ADDNET_LEGACY_KEY = "sshs_legacy_hash"
LEGACY_OFFSET, LEGACY_SIZE = 0x100000, 0x10000  # the 64 KiB at 1 MiB, as A1111's old model hash
HASH_CHUNK = 1 << 20


def _addnet_hashes_of(data: bytes) -> tuple[str, str]:
    """(sha256 of a safetensors file's bytes after its 8-byte length and JSON header, 8-hex sha256 of its 64 KiB at
    1 MiB): sd-webui-additional-networks' new and legacy hashes."""
    header = 8 + int.from_bytes(data[:8], "little")
    legacy = hashlib.sha256(data[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_SIZE]).hexdigest()[:8]
    return hashlib.sha256(data[header:]).hexdigest(), legacy


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya computes them: the file serialised with only its `ss_*` metadata
    (so later user metadata never changes the hash), then hashed as additional-networks does."""
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    return _addnet_hashes_of(save(tensors, metadata=training_only))


def addnet_hash_file(path: str | os.PathLike) -> str:
    """The additional-networks hash of a safetensors file on disk (sha256 of everything after its header): equal to
    the sshs_model_hash kohya and Atelier write, and to what A1111 computes for a file without one."""
    fd = open_resolved(os.path.realpath(path), "LoRA file")
    with os.fdopen(fd, "rb") as f:
        size = f.read(8)
        if len(size) != 8:
            raise ValueError(f"'{Path(path).name}' is not a safetensors file (shorter than its 8-byte header length).")
        f.seek(8 + int.from_bytes(size, "little"))
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_lora(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Writes a .safetensors LoRA through a temp file in the same folder and os.replace: all of it or nothing, with
    kohya's sshs_model_hash / sshs_legacy_hash of the file added to its metadata."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS:
        raise ValueError(f"LoRA files are written as safetensors; '{path}' should end in '.safetensors'.")
    prepared = _prepared(tensors)
    meta = {k: v for k, v in metadata.items() if k not in (ADDNET_HASH_KEY, ADDNET_LEGACY_KEY)}
    if all(isinstance(v, str) for v in meta.values()):  # else write_safetensors refuses the metadata by name
        meta[ADDNET_HASH_KEY], meta[ADDNET_LEGACY_KEY] = addnet_hashes(prepared, meta)
    write_safetensors(path, prepared, meta, what="LoRA")


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
    for key, t in tensors.items():  # the last line of defence: a NaN never reaches a file
        bad = non_finite_count(t)
        if bad:
            raise ValueError(f"Refusing to write {what} '{path.name}': '{key}' holds {bad} NaN/inf values out of "
                             f"{t.numel()} (a diverged run, or values beyond the range of {t.dtype}). Nothing was "
                             "written; lower the strengths or fix the source LoRAs.")
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
        os.chmod(tmp, file_mode_for(path))  # a replaced file keeps its mode, a new one gets the umask's
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
        if non_finite_count(t):
            raise ValueError(f"LoRA file '{path}' has NaN or inf values in '{key}' (shape {tuple(t.shape)}); "
                             "it was saved from a diverged run or is damaged: use an earlier checkpoint.")
    return tensors, metadata


def load_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a LoRA file without reading its tensors (safetensors header only; other formats have none)."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS:
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"'{path.name}' is not a readable safetensors file ({e}); the file is damaged or "
                         "incomplete: download or export it again.") from None


# Key layouts ComfyUI's LoraLoader reads, by the prefix of their module names.
KEY_FORMATS = (("kohya", ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")),
               ("ComfyUI", ("diffusion_model.", "text_encoders.")),
               ("diffusers / PEFT", ("unet.", "text_encoder.", "text_encoder_2.", "transformer.")))


def key_formats(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The key layouts a LoRA file uses: 'kohya' (lora_unet_*), 'ComfyUI' (diffusion_model.* / text_encoders.*, as
    ComfyUI's LoraSave writes), 'diffusers / PEFT' (unet.* ...), 'other'; one entry per layout present."""
    found = []
    for key in tensors:
        name = next((label for label, prefixes in KEY_FORMATS if key.startswith(prefixes)), "other")
        if name not in found:
            found.append(name)
    return sorted(found, key=lambda n: [label for label, _ in KEY_FORMATS].index(n) if n != "other" else 99)


def lora_summary(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """What a kohya-format LoRA holds, read from the tensors (metadata such as ss_network_dim is not trusted over them).

    has_conv is true when any adapted layer is a Conv2d (4-D lora_down), 1x1 included. A module without `.alpha`
    is listed in missing_alpha; loaders use alpha = rank for it (scale 1). other_keys are keys that are not
    lora_down / lora_up / alpha, e.g. LyCORIS `hada_w1_a` or `lokr_w1`, which this format does not describe.
    """
    bases = module_bases(tensors)
    ranks, prefixes = set(), {}
    for base in bases:
        ranks.add(int(tensors[base + DOWN].shape[0]))
        prefixes[base_prefix(base)] = prefixes.get(base_prefix(base), 0) + 1
    alphas = {float(tensors[b + ALPHA]) for b in bases if b + ALPHA in tensors and tensors[b + ALPHA].numel() == 1}
    return {
        "modules": len(bases),
        "ranks": sorted(ranks),
        "alphas": sorted(a for a in alphas if not math.isnan(a)),
        "prefixes": dict(sorted(prefixes.items())),
        "has_conv": any(tensors[b + DOWN].ndim == 4 for b in bases),
        "missing_alpha": [b for b in bases if b + ALPHA not in tensors],
        "other_keys": sorted(k for k in tensors if not k.endswith((DOWN, UP, ALPHA))),
    }


def check_lora_tensors(tensors: dict[str, torch.Tensor], name: str) -> None:
    """Raises ValueError naming file `name` and the key when the tensors cannot form LoRA layers: NaN/inf values,
    an alpha that is not one number, an up without its down (or the reverse), a factor that is not a matrix (0-d,
    1-d), an integer factor, rank 0, or up and down of different ranks. Every layout ComfyUI reads is checked."""

    def refuse(key: str, problem: str):
        raise ValueError(f"LoRA '{name}': '{key}' {problem}. The file is damaged or was not written as a LoRA: "
                         "re-save or re-download it (or choose another file).")

    pairs: dict[tuple[str, int], dict[str, str]] = {}
    for key, t in tensors.items():
        bad = non_finite_count(t)
        if bad:
            refuse(key, f"holds {bad} NaN/inf values out of {t.numel()} (saved from a diverged run?)")
        if key.endswith(ALPHA) and t.numel() != 1:
            refuse(key, f"should be one number (the network alpha) but has shape {tuple(t.shape)}")
        found = pair_of(key)
        if found:
            pairs.setdefault(found[:2], {})[found[2]] = key
    for (base, layout), sides in pairs.items():
        up_suffix, down_suffix = PAIR_SUFFIXES[layout]
        if len(sides) == 1:
            have = next(iter(sides.values()))
            missing = base + (down_suffix if "up" in sides else up_suffix)
            refuse(have, f"{tuple(tensors[have].shape)} has no partner '{missing}' (a LoRA layer needs both its "
                         "up and down factor)")
        up, down = tensors[sides["up"]], tensors[sides["down"]]
        for key, t, shape in ((sides["down"], down, "(rank, in_features)"), (sides["up"], up, "(out_features, rank)")):
            if t.ndim < 2:
                refuse(key, f"is {t.ndim}-d with shape {tuple(t.shape)}; a LoRA factor is a matrix {shape} (or its "
                            "conv form with kernel dimensions)")
            if not t.is_floating_point():
                refuse(key, f"holds {t.dtype} values; LoRA factors are floating-point")
        rank = int(down.shape[0])
        if rank == 0 or int(up.shape[1]) != rank or math.prod(up.shape[2:]) != 1:
            refuse(sides["up"], f"is {tuple(up.shape)} but '{sides['down']}' is {tuple(down.shape)}: up must be "
                                f"(out, rank[, 1, 1]) with the rank (>= 1) of down's first dimension")
        mid = tensors.get(base + MID) if layout == 0 else None
        if mid is not None and (mid.ndim < 3 or tuple(mid.shape[:2]) != (rank, rank)):
            refuse(base + MID, f"is {tuple(mid.shape)}; a Tucker core of rank {rank} is ({rank}, {rank}, kh, kw)")


# Text-conditioning widths of the SD families: the input width of UNet cross-attention keys/values (attn2) or of
# the text encoder's attention. One width identifies the family even in a UNet-only or text-only LoRA.
SD_WIDTHS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
SD_STYLE = "SD-style"
_DIT = re.compile(r"double_blocks|single_blocks|single_transformer_blocks|joint_blocks|^lora_transformer_|"
                  r"^transformer\.")
_SD_PREFIXES = ("lora_unet_", "lora_te_", "unet.", "text_encoder.", "diffusion_model.", "text_encoders.")
_WIDTH_KEY = re.compile(r"(attn2[._]to_[kv]|^lora_te_.*self_attn_[qkv]_proj|^text_encoders?\..*self_attn\.[qkv]_proj)")


def lora_family(tensors: dict[str, torch.Tensor]) -> str:
    """The model family a LoRA was made for, from its key names and text-conditioning width: 'SDXL', 'Flux / DiT',
    'SD1.x', 'SD2.x', 'SD-style (text width N)', 'SD-style' (UNet layers only, no width to read) or 'unknown'."""
    keys = list(tensors)
    if any(_DIT.search(k) for k in keys):
        return "Flux / DiT"  # first: SD3.5's and Flux.1's text encoders are te1 / te2 / te3 too
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoders.clip_g.")) for k in keys):
        return "SDXL"  # kohya names SDXL's two text encoders te1 / te2; ComfyUI's format names OpenCLIP-G clip_g
    if not any(k.startswith(_SD_PREFIXES) for k in keys):
        return "unknown"
    for key in keys:
        found = pair_of(key)
        if found and found[2] == "down" and _WIDTH_KEY.search(found[0]) and tensors[key].ndim >= 2:
            width = int(tensors[key].shape[1])
            return SD_WIDTHS.get(width, f"{SD_STYLE} (text width {width})")
    return SD_STYLE


def _families_fit(a: str, b: str) -> bool:
    """Same family, or one side is SD-style without a width to tell SD1 / SD2 / SDXL apart."""
    sd = set(SD_WIDTHS.values())
    return a == b or (SD_STYLE in (a, b) and all(f in sd or f.startswith(SD_STYLE) for f in (a, b)))


def check_same_family(named: list[tuple[str, dict[str, torch.Tensor]]]) -> str:
    """The family shared by (name, tensors) LoRAs; ValueError naming both files and families when two differ."""
    families = [(name, lora_family(t)) for name, t in named]
    for i, (name_a, fam_a) in enumerate(families):
        for name_b, fam_b in families[i + 1:]:
            if not _families_fit(fam_a, fam_b):
                raise ValueError(f"LoRA '{name_a}' is for {fam_a} but '{name_b}' is for {fam_b}: a merge of LoRAs for "
                                 "different model families loads on neither. Merge only LoRAs made for the same base "
                                 "model.")
    known = [f for _, f in families if f != SD_STYLE]
    return known[0] if known else (families[0][1] if families else "unknown")


def check_file_finite(path: str | os.PathLike, shown_name: str) -> None:
    """Raises ValueError when a safetensors file (e.g. a just-written checkpoint) holds a NaN or inf value; reads
    one tensor at a time, so a large checkpoint never sits in memory twice."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():
            bad = non_finite_count(f.get_tensor(key))
            if bad:
                raise ValueError(f"'{shown_name}' would hold {bad} NaN/inf values in '{key}' (the merge overflowed "
                                 "or a source was broken), so it was not saved. Lower the strengths or block weights, "
                                 "or check the LoRAs with Inspect LoRA.")
