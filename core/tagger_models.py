"""The standard WD14 v3 tagger models and their optional, checksum-checked download. Nothing here knows ComfyUI.

The models are SmilingWolf's on Hugging Face (model.onnx + selected_tags.csv per repository). Downloading is off
unless the administrator sets ATELIER_ALLOW_DOWNLOADS=1, and a file is fetched only against a sha256 the
administrator configured in ATELIER_TAGGER_REGISTRY (JSON: {"<model>": {"model.onnx": "<sha256>",
"selected_tags.csv": "<sha256>"}}): Atelier ships no checksums of its own, and nothing is fetched unchecked.
ATELIER_TAGGER_BASE_URL points at a mirror; '{name}' in it is replaced by the model name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .download import DownloadError, check_sha256, check_url, download_file
from .paths import PathRefused, safe_name

ALLOW_ENV = "ATELIER_ALLOW_DOWNLOADS"
BASE_URL_ENV = "ATELIER_TAGGER_BASE_URL"
REGISTRY_ENV = "ATELIER_TAGGER_REGISTRY"
DEFAULT_BASE_URL = "https://huggingface.co/SmilingWolf/{name}/resolve/main/"
STANDARD_MODELS = ("wd-vit-tagger-v3", "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3", "wd-vit-large-tagger-v3",
                   "wd-eva02-large-tagger-v3")
# Download order: the tag list first, the model last, since a folder counts as a model once model.onnx is in it.
FILES = ("selected_tags.csv", "model.onnx")
MAX_BYTES = {"selected_tags.csv": 32 * 2**20, "model.onnx": 4 * 2**30}  # the largest v3 model is ~1.3 GB
TIMEOUT_SECONDS = 60.0  # per connect / read; a stalled server ends the download instead of hanging the queue
DOWNLOAD_MARK = " (download)"  # how the dropdown marks a model that is fetched on first use
HOW_TO_ENABLE = (
    f"An administrator can enable the download with {ALLOW_ENV}=1 and {REGISTRY_ENV}='{{\"<model>\": "
    "{\"model.onnx\": \"<sha256>\", \"selected_tags.csv\": \"<sha256>\"}}' (the SHA256 each file's page on Hugging "
    f"Face shows), optionally {BASE_URL_ENV} for a mirror, then restart ComfyUI."
)


@dataclass(frozen=True)
class TaggerDownload:
    """One model's files: name -> (url, sha256)."""

    name: str
    files: dict[str, tuple[str, str]]


def downloads_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True only when the administrator set ATELIER_ALLOW_DOWNLOADS=1."""
    return environ.get(ALLOW_ENV, "").strip() == "1"


def base_url(environ: Mapping[str, str] = os.environ) -> str:
    """The URL template files are fetched from ('{name}' is the model); the model name is appended as a folder when
    the administrator's URL has no '{name}'."""
    url = environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
    if "{name}" not in url:
        url = url.rstrip("/") + "/{name}/"
    check_url(url.replace("{name}", "x"))
    return url if url.endswith("/") else url + "/"


def configured_checksums(environ: Mapping[str, str] = os.environ) -> dict[str, dict[str, str]]:
    """The administrator's checksums from ATELIER_TAGGER_REGISTRY, each model needing both files' sha256."""
    raw = environ.get(REGISTRY_ENV, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DownloadError(f"{REGISTRY_ENV} is not valid JSON ({e}); expected "
                            '{"<model>": {"model.onnx": "<sha256>", "selected_tags.csv": "<sha256>"}}.') from None
    if not isinstance(data, dict):
        raise DownloadError(f"{REGISTRY_ENV} must be a JSON object of models, got {type(data).__name__}.")
    out = {}
    for name, files in data.items():
        safe_name(name, f"model name in {REGISTRY_ENV}")
        if not isinstance(files, dict) or sorted(files) != sorted(FILES):
            raise DownloadError(f"{REGISTRY_ENV} entry '{name}' must give exactly the sha256 of "
                                f"{' and '.join(FILES)}, got {sorted(files) if isinstance(files, dict) else files!r}.")
        out[name] = {f: check_sha256(files[f]) for f in FILES}
    return out


def downloadable(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Models that may be fetched now: none unless enabled; then those with configured checksums, standard first."""
    if not downloads_enabled(environ):
        return []
    sums = configured_checksums(environ)
    return [n for n in STANDARD_MODELS if n in sums] + sorted(n for n in sums if n not in STANDARD_MODELS)


def plan(name: str, environ: Mapping[str, str] = os.environ) -> TaggerDownload:
    """The URLs and checksums for `name`, refused (saying what to do) when downloads are off or unconfigured."""
    if not downloads_enabled(environ):
        raise DownloadError(f"Tagger model '{name}' is not in models/wd14_tagger and downloads are off. "
                            + where_to_get(name) + " " + HOW_TO_ENABLE)
    sums = configured_checksums(environ)
    if name not in sums:
        raise DownloadError(f"Tagger model '{name}' has no sha256 configured, so it is not downloaded (nothing is "
                            "fetched unchecked). " + HOW_TO_ENABLE)
    url = base_url(environ).replace("{name}", name)
    return TaggerDownload(name, {f: (url + f, sums[name][f]) for f in FILES})


def where_to_get(name: str) -> str:
    """Where a standard model comes from and how to place it by hand."""
    source = (f"It is SmilingWolf's, at https://huggingface.co/SmilingWolf/{name}: " if name in STANDARD_MODELS
              else "Download ")
    return (f"{source}put its model.onnx and selected_tags.csv in models/wd14_tagger/{name}/ and reload the page.")


def fetch_model(job: TaggerDownload, folder: Path, *, on_progress: Callable[[str, int, int | None], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Path:
    """Downloads the model's files into `folder` (an existing, checked folder), each sha256-checked and atomic; if one
    fails, the files this call already placed are removed again, so no half model is left."""
    placed = []
    try:
        for file, (url, sha) in job.files.items():
            target = folder / file
            if target.exists():
                continue  # kept from an earlier complete download, or placed by hand
            progress = None if on_progress is None else (lambda done, total, f=file: on_progress(f, done, total))
            download_file(url, target, sha, timeout=TIMEOUT_SECONDS, max_bytes=MAX_BYTES[file],
                          on_progress=progress, should_stop=should_stop)
            placed.append(target)
    except BaseException:
        for target in placed:
            if target.exists() and not target.is_symlink():
                target.unlink()
        raise
    return folder


def model_choice(value: str) -> tuple[str, bool]:
    """The model name behind a dropdown value, and whether it was offered as a download."""
    if not isinstance(value, str):
        raise PathRefused(f"Expected a tagger model name as text, got {type(value).__name__}.")
    if value.endswith(DOWNLOAD_MARK):
        return value[: -len(DOWNLOAD_MARK)], True
    return value, False
