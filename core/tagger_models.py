"""The standard WD14 v3 tagger models and their optional, checksum-checked download. Nothing here knows ComfyUI.

The models are SmilingWolf's on Hugging Face (model.onnx + selected_tags.csv per repository). Downloading is off
unless the administrator sets ATELIER_ALLOW_DOWNLOADS=1. Atelier ships no checksums of its own and nothing is fetched
unchecked; each file's expected checksum comes from, in this order:

1. ATELIER_TAGGER_REGISTRY, when the administrator configured the model there (JSON: {"<model>": {"model.onnx":
   "<sha256>", "selected_tags.csv": "<sha256>"}}); this also lets a model that is not one of the standard five be
   fetched, and no API is asked.
2. For a standard model otherwise, the Hugging Face Hub API (ATELIER_TAGGER_API_URL, default https://huggingface.co):
   POST /api/models/SmilingWolf/<model>/paths-info/main with the two paths answers, per file, its size, its git blob
   id ("oid") and, for a Git LFS file, "lfs": {"oid": <sha256 of the content>, "size": ...}.
   - model.onnx is an LFS file: it is checked against the API's sha256, exactly as a registry sha256 would be.
   - selected_tags.csv may be a plain git file, for which the API gives no sha256. It is then checked against its git
     blob id (sha1 of b"blob <size>\\0" + bytes, what git itself names the file by), which pins its exact bytes and
     size; it is small (capped at 32 MiB) and read as data only (tag names, never executed), and the sha256 of what
     arrived is returned (the node logs it) so the administrator can pin it in the registry. A file the API answers
     neither way for is refused.

ATELIER_TAGGER_BASE_URL points the file downloads at a mirror ('{name}' in it is replaced by the model name); the
checksums still come from the registry or the API, so a mirror is checked against the original. Files are fetched
into the folder the caller gives (models/wd14_tagger/<model>/), each atomically; a failure leaves no file behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from .download import DownloadError, GitBlob, check_git_blob, check_sha256, check_url, download_file, fetch_json
from .paths import PathRefused, safe_name

ALLOW_ENV = "ATELIER_ALLOW_DOWNLOADS"
BASE_URL_ENV = "ATELIER_TAGGER_BASE_URL"
REGISTRY_ENV = "ATELIER_TAGGER_REGISTRY"
API_URL_ENV = "ATELIER_TAGGER_API_URL"
DEFAULT_BASE_URL = "https://huggingface.co/SmilingWolf/{name}/resolve/main/"
DEFAULT_API_URL = "https://huggingface.co"
PATHS_INFO_ROUTE = "/api/models/SmilingWolf/{name}/paths-info/main"  # the Hub API's per-path info (size, oid, lfs)
STANDARD_MODELS = ("wd-vit-tagger-v3", "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3", "wd-vit-large-tagger-v3",
                   "wd-eva02-large-tagger-v3")
# Download order: the tag list first, the model last, since a folder counts as a model once model.onnx is in it.
FILES = ("selected_tags.csv", "model.onnx")
MAX_BYTES = {"selected_tags.csv": 32 * 2**20, "model.onnx": 4 * 2**30}  # the largest v3 model is ~1.3 GB
TIMEOUT_SECONDS = 60.0  # per connect / read; a stalled server ends the download instead of hanging the queue
DOWNLOAD_MARK = " (download)"  # how the dropdown marks a model that is fetched on first use
HOW_TO_ENABLE = (
    f"An administrator can enable the download with {ALLOW_ENV}=1 (the standard models' checksums are then read from "
    f"the Hugging Face API, {API_URL_ENV}), or pin them with {REGISTRY_ENV}='{{\"<model>\": "
    "{\"model.onnx\": \"<sha256>\", \"selected_tags.csv\": \"<sha256>\"}}' (the SHA256 each file's page on Hugging "
    f"Face shows), optionally {BASE_URL_ENV} for a mirror, then restart ComfyUI."
)


class RemoteFile(NamedTuple):
    """Where one file comes from and what it must hash to: a sha256, or (sha256=None) a git blob id and size."""

    url: str
    sha256: str | None
    git_blob: GitBlob | None = None


@dataclass(frozen=True)
class TaggerDownload:
    """One model's files: name -> RemoteFile."""

    name: str
    files: dict[str, RemoteFile]


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


def api_url(environ: Mapping[str, str] = os.environ) -> str:
    """The Hugging Face Hub API the standard models' checksums are read from (a mirror of it may stand in)."""
    url = (environ.get(API_URL_ENV, "").strip() or DEFAULT_API_URL).rstrip("/")
    return check_url(url)


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
    """Models that may be fetched now: none unless enabled; then the standard ones (checksums from the registry or
    the API) and the registry's others."""
    if not downloads_enabled(environ):
        return []
    sums = configured_checksums(environ)
    return list(STANDARD_MODELS) + sorted(n for n in sums if n not in STANDARD_MODELS)


def plan(name: str, environ: Mapping[str, str] = os.environ) -> TaggerDownload:
    """The URLs and checksums for `name` (the registry's, else the Hub API's), refused (saying what to do) when
    downloads are off or no checksum can be had."""
    if not downloads_enabled(environ):
        raise DownloadError(f"Tagger model '{name}' is not in models/wd14_tagger and downloads are off. "
                            + where_to_get(name) + " " + HOW_TO_ENABLE)
    sums = configured_checksums(environ)
    url = base_url(environ).replace("{name}", name)
    if name in sums:  # the administrator's pinned checksums win; no API is asked
        return TaggerDownload(name, {f: RemoteFile(url + f, sums[name][f]) for f in FILES})
    if name not in STANDARD_MODELS:
        raise DownloadError(f"Tagger model '{name}' is not one of the standard models ({', '.join(STANDARD_MODELS)}) "
                            f"and has no sha256 in {REGISTRY_ENV}, so it is not downloaded (nothing is fetched "
                            "unchecked). " + HOW_TO_ENABLE)
    checks = api_checksums(name, environ)
    return TaggerDownload(name, {f: RemoteFile(url + f, *checks[f]) for f in FILES})


def api_checksums(name: str, environ: Mapping[str, str] = os.environ) -> dict[str, tuple[str | None, GitBlob | None]]:
    """Each file's (sha256, None) for an LFS file or (None, git blob) for a plain git file, from the Hub API's
    paths-info answer for the standard model `name`."""
    url = api_url(environ) + PATHS_INFO_ROUTE.replace("{name}", safe_name(name, "tagger model name"))
    what = f"the checksums of '{name}'"
    answer = fetch_json(url, {"paths": list(FILES)}, timeout=TIMEOUT_SECONDS, what=what)
    if not isinstance(answer, list):
        raise DownloadError(f"The API's answer with {what} is a JSON {type(answer).__name__}, expected a list of "
                            f"files. Check {API_URL_ENV}.")
    entries = {e.get("path"): e for e in answer if isinstance(e, dict)}
    return {f: _checksum_of(f, entries.get(f), what) for f in FILES}


def _checksum_of(file: str, entry: dict | None, what: str) -> tuple[str | None, GitBlob | None]:
    """One file's checksum from its paths-info entry: the LFS sha256 when present, else its git blob id and size."""
    if entry is None or entry.get("type") != "file":
        raise DownloadError(f"The API's answer with {what} does not list '{file}' as a file; the repository may have "
                            f"changed. Place the files by hand or pin them in {REGISTRY_ENV}.")
    size = entry.get("size")
    if isinstance(size, int) and size > MAX_BYTES[file]:
        raise DownloadError(f"The API lists '{file}' at {size:,} bytes, over the {MAX_BYTES[file]:,}-byte limit for "
                            "this file; it is not downloaded. Check the model name.")
    lfs = entry.get("lfs")
    if lfs is not None and not isinstance(lfs, dict):
        raise DownloadError(f"The API's 'lfs' field for '{file}' is a {type(lfs).__name__}, expected an object with "
                            f"'oid'. Check {API_URL_ENV}.")
    try:
        if lfs is not None:
            return check_sha256(lfs.get("oid")), None  # an LFS object's id is the sha256 of its content
        return None, check_git_blob(GitBlob(entry.get("oid"), size))  # a plain git file: its blob id and size
    except DownloadError as e:
        raise DownloadError(f"The API's answer with {what} gives an unusable checksum for '{file}' ({e}) Check "
                            f"{API_URL_ENV}, or pin the checksums in {REGISTRY_ENV}.") from None


def where_to_get(name: str) -> str:
    """Where a standard model comes from and how to place it by hand."""
    source = (f"It is SmilingWolf's, at https://huggingface.co/SmilingWolf/{name}: " if name in STANDARD_MODELS
              else "Download ")
    return (f"{source}put its model.onnx and selected_tags.csv in models/wd14_tagger/{name}/ and reload the page.")


def fetch_model(job: TaggerDownload, folder: Path, *, on_progress: Callable[[str, int, int | None], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict[str, str]:
    """Downloads the model's files into `folder` (an existing, checked folder), each checksum-checked and atomic; if
    one fails, the files this call already placed are removed again, so no half model is left. Returns the sha256 of
    each file it placed."""
    placed = {}
    try:
        for file, remote in job.files.items():
            target = folder / file
            if target.exists():
                continue  # kept from an earlier complete download, or placed by hand
            progress = None if on_progress is None else (lambda done, total, f=file: on_progress(f, done, total))
            placed[file] = download_file(remote.url, target, remote.sha256, git_blob=remote.git_blob,
                                         timeout=TIMEOUT_SECONDS, max_bytes=MAX_BYTES[file],
                                         on_progress=progress, should_stop=should_stop)
    except BaseException:
        for file in placed:
            target = folder / file
            if target.exists() and not target.is_symlink():
                target.unlink()
        raise
    return placed


def model_choice(value: str) -> tuple[str, bool]:
    """The model name behind a dropdown value, and whether it was offered as a download."""
    if not isinstance(value, str):
        raise PathRefused(f"Expected a tagger model name as text, got {type(value).__name__}.")
    if value.endswith(DOWNLOAD_MARK):
        return value[: -len(DOWNLOAD_MARK)], True
    return value, False
