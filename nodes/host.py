"""Adapters from ComfyUI's host services (folders, progress, interrupt) to the plain values core/ expects."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from .compat import default_datasets_root, io, register_folder

from ..core import tagger_models as tm
from ..core.paths import (PathRefused, Root, check_relative, list_folders, make_folder_inside, quoted, resolve_folder,
                          resolve_in_roots, roots_from_env, safe_name)

DATASETS_FOLDER_TYPE = "datasets"
SAVED_DATASETS_SUBDIR = ("atelier", "datasets")
DATASET = io.Custom("ATELIER_DATASET")


def register_folder_types() -> None:
    """Registers the `datasets` folder type (models/datasets by default; more roots via extra_model_paths.yaml),
    or keeps the host's own where it has one (upstream registers <ComfyUI>/datasets itself)."""
    register_folder(DATASETS_FOLDER_TYPE, default_datasets_root())


def output_root() -> Path:
    return Path(folder_paths.get_output_directory())


def saved_datasets_dir() -> Path:
    return output_root().joinpath(*SAVED_DATASETS_SUBDIR)


def dataset_roots() -> list[Root]:
    """Where datasets may be read: input/, every `datasets` folder, the administrator's roots, saved datasets."""
    roots = [Root("input", Path(folder_paths.get_input_directory()))]
    roots += [Root("datasets", Path(p)) for p in folder_paths.get_folder_paths(DATASETS_FOLDER_TYPE)]
    roots += roots_from_env()
    roots.append(Root("saved", saved_datasets_dir()))
    return roots


def dataset_folder_options() -> list[str]:
    """The dropdown: each root itself, then its sub-folders two levels down."""
    roots = dataset_roots()
    return list(dict.fromkeys([r.label for r in roots] + list_folders(roots, depth=2)))


def resolve_dataset_folder(folder: str, sub_path: str) -> tuple[Path, Root]:
    """Resolves the dropdown value plus the typed sub-path. ComfyUI 0.3.64 does not check V3 combo values against
    their options, so `folder` is as untrusted as `sub_path`: both are validated here."""
    rel = check_relative(sub_path or "")  # on its own, so '/etc' is refused as absolute rather than joined
    return resolve_folder(f"{folder}/{rel}" if rel else folder, dataset_roots())


def model_output_path(folder_type: str, name: str, what: str) -> Path:
    """models/<folder type>/atelier/<name>.safetensors (the type's first folder); `name` must be a plain file name."""
    name = safe_name(name, what)
    folder = Path(folder_paths.get_folder_paths(folder_type)[0]) / "atelier"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (name if name.endswith(".safetensors") else f"{name}.safetensors")


def model_roots(folder_type: str) -> list[Root]:
    """Every folder ComfyUI has for a model type (models/loras, extra_model_paths.yaml entries), as roots."""
    return [Root(f"models/{folder_type}", Path(p)) for p in folder_paths.get_folder_paths(folder_type)]


def forget_model_list(folder_type: str) -> None:
    """Drops ComfyUI's cached file list of a model type, so files just written are listed (its mtime check can miss
    a file written in the same clock tick as the last listing)."""
    folder_paths.filename_list_cache.pop(folder_type, None)


def model_file(folder_type: str, name: str, what: str | None = None) -> Path:
    """The real path of `name` from a model folder's list. The name must be one the list offers (ComfyUI 0.3.64
    does not check dropdown values) and its real path must lie inside that type's folders (a symlinked file leading
    elsewhere is refused): the path policy for models."""
    what = what or f"{folder_type} file"
    if isinstance(name, str) and name not in folder_paths.get_filename_list(folder_type):
        forget_model_list(folder_type)  # a file written moments ago (a run upstream) may not be in the cached list
    if not isinstance(name, str) or name not in folder_paths.get_filename_list(folder_type):
        raise PathRefused(f"No {what} named '{quoted(name)}' in models/{folder_type}; pick one from the list (put the "
                          f"file in models/{folder_type} and refresh the page if it is new).")
    return resolve_in_roots(folder_paths.get_full_path_or_raise(folder_type, name), model_roots(folder_type), what)


def output_subdir(*parts: str) -> Path:
    """A folder under ComfyUI's output/, each part a plain name (refused otherwise), created if missing."""
    path = output_root().joinpath(*[safe_name(p, "output folder name") for p in parts])
    path.mkdir(parents=True, exist_ok=True)
    return path


class Progress:
    """Progress bar + interrupt check for a loop of `total` steps (interrupt raises ComfyUI's own exception)."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(max(total, 1))

    def __call__(self, done: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done)


__all__ = ["DATASET", "PathRefused", "Progress", "dataset_folder_options", "dataset_roots", "model_output_path",
           "output_subdir",
           "register_folder_types", "resolve_dataset_folder", "saved_datasets_dir"]


TAGGER_FOLDER_TYPE = "wd14_tagger"


def register_tagger_folder() -> None:
    """models/wd14_tagger (more roots via `wd14_tagger:` in extra_model_paths.yaml)."""
    folder_paths.add_model_folder_path(TAGGER_FOLDER_TYPE, os.path.join(folder_paths.models_dir, "wd14_tagger"))


def tagger_roots() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(TAGGER_FOLDER_TYPE)]


def resolve_tagger_model(name: str) -> tuple[Path, list[Root]]:
    """The model folder or .onnx file called `name` in a wd14_tagger root (a plain name, never a path), and the
    roots its files must stay inside when opened."""
    safe_name(name, "tagger model name")
    roots = [Root("models/wd14_tagger", p) for p in tagger_roots()]
    for root in roots:
        candidate = root.path / name
        if candidate.exists():
            return resolve_in_roots(candidate, roots, "tagger model"), roots
    raise PathRefused(f"Tagger model '{quoted(name)}' not found in models/wd14_tagger. Put a folder with model.onnx "
                      "and selected_tags.csv (or '<name>.onnx' + '<name>.csv') in models/wd14_tagger.")



def fetch_tagger_model(name: str) -> None:
    """Downloads a standard or registry model (checksums checked) into models/wd14_tagger/<name>/ with a progress
    bar; Cancel stops it and leaves no partial file."""
    job = tm.plan(name)  # refuses when downloads are off or no checksum can be had (registry or Hub API)
    roots = [Root("models/wd14_tagger", p) for p in tagger_roots()]
    target = roots[0].path / safe_name(name, "tagger model name")  # the first root: models/wd14_tagger itself
    created = not target.exists()
    folder = make_folder_inside(target, roots, "tagger model folder")
    bar = comfy.utils.ProgressBar(100)

    def progress(file: str, done: int, total: int | None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel ends the download
        if total:
            bar.update_absolute(int(100 * done / total))

    try:
        placed = tm.fetch_model(job, folder, on_progress=progress)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a folder we made for a model that did not arrive is not left as an empty "model"
        raise
    for file, sha in placed.items():  # so an administrator can pin what arrived in ATELIER_TAGGER_REGISTRY
        logging.info("[Atelier] downloaded models/wd14_tagger/%s/%s (sha256 %s)", name, file, sha)
