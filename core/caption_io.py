"""Writes edited captions back as sidecar files: dry-run diff first, backups, atomic UTF-8 writes, all or nothing.

Nothing here knows ComfyUI. The caller passes the roots writing is allowed in (the dataset roots) or an output
folder for a new caption set; a target outside them is refused before anything is written. Every folder is checked
for writability up front, so a read-only folder stops the run with nothing changed; each file is written through a
temp file and a rename, so no caption is ever half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .caption_text import check_caption_extension
from .captions import caption_diff
from .dataset import Dataset, read_caption
from .dataset_io import atomic_write_bytes
from .paths import PathRefused, is_inside, safe_name

BACKUP_DIR = ".atelier_caption_backup"  # hidden: dataset scans skip dot-folders


class CaptionWriteError(OSError):
    """A caption set that cannot be written; nothing was changed."""


@dataclass(frozen=True)
class CaptionWrite:
    target: Path
    before: str | None  # None: no sidecar yet
    after: str


def plan_writes(dataset: Dataset, extension: str = ".txt", out_dir: Path | None = None,
                encoding: str = "utf-8") -> tuple[list[CaptionWrite], list[str]]:
    """The sidecar each item's caption goes to (beside its image, or under `out_dir/<subset>/`), and its current
    text."""
    ext = check_caption_extension(extension)  # an allow-list: '', '.', '../x' or '.txt/../x' never reach a path
    writes, notes, seen = [], [], set()
    for subset in dataset.subsets:
        for it in subset.items:
            if it.source.startswith("memory:"):
                notes.append(f"{it.source}: image made in the graph has no file to put a caption beside")
                continue
            stem = Path(it.source).stem
            target = (out_dir / safe_name(subset.name, "subset name") / f"{stem}{ext}" if out_dir is not None
                      else Path(it.source).with_suffix(ext))
            if target in seen:
                continue  # the same file in two subsets (e.g. a downscaled copy) shares one sidecar
            seen.add(target)
            before = read_caption(target, encoding) if target.is_file() else None
            writes.append(CaptionWrite(target, before, it.caption))
    return writes, notes


def _check_writable(folder: Path) -> None:
    """Creates and removes a temp file: catches permissions and read-only/immutable folders, even for root."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".atelier-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CaptionWriteError(f"Caption folder '{folder}' is not writable ({e.strerror or e}); nothing was written. "
                                "Make it writable, or write a new caption set to the output folder instead.") from None


def write_captions(dataset: Dataset, *, allowed_roots: list[Path], extension: str = ".txt", dry_run: bool = True,
                   backup: bool = True, out_dir: Path | None = None, encoding: str = "utf-8",
                   preview: int = 20) -> str:
    """Writes changed captions (or only reports them when dry_run); returns the diff and what was done."""
    writes, notes = plan_writes(dataset, extension, out_dir, encoding)
    changed = [w for w in writes if w.before != w.after]
    roots = [out_dir] if out_dir is not None else allowed_roots
    outside = [w.target for w in changed if not any(is_inside(w.target.parent, r) for r in roots)]
    if outside:
        raise PathRefused(f"Caption file '{outside[0]}' is outside the allowed roots ({', '.join(map(str, roots))}); "
                          "captions are written only beside dataset images inside them or to the output folder.")
    diff = caption_diff([(str(w.target), w.before or "") for w in writes], [(str(w.target), w.after) for w in writes],
                        limit=preview)
    lines = [diff] + [f"note: {n}" for n in notes]
    if dry_run:
        return "\n".join(["DRY RUN: nothing written (turn dry_run off to write)."] + lines)
    folders = sorted({w.target.parent for w in changed})
    for folder in folders:
        _check_writable(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backed_up = 0
    if backup:
        for w in changed:
            if w.before is not None:
                dest = w.target.parent / BACKUP_DIR / stamp / w.target.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(w.target, dest)  # the original bytes, encoding and all
                backed_up += 1
    for w in changed:
        try:
            atomic_write_bytes(w.target, w.after.encode("utf-8"))
        except OSError as e:
            raise CaptionWriteError(f"Writing '{w.target}' failed ({e.strerror or e}); files written before it are "
                                    f"complete and backed up in {BACKUP_DIR}/{stamp}.") from None
    summary = f"wrote {len(changed)} caption file(s) as UTF-8"
    if backup and backed_up:
        summary += f"; originals backed up to {BACKUP_DIR}/{stamp}/ beside them"
    elif not backup:
        summary += " without backup"
    return "\n".join([summary] + lines)
