"""Writes edited captions back as sidecar files: dry-run diff first, backups, atomic UTF-8 writes, all or nothing.

Nothing here knows ComfyUI. The caller passes the roots writing is allowed in (the dataset roots) or an output
folder for a new caption set. Every caption file is resolved (symlinks followed) and must lie inside them when it is
read, backed up or written; one that leads outside stops the run before anything is read from it or written. Every
folder is checked for writability up front, so a read-only folder stops the run with nothing changed; each file is
written through a temp file and a rename, so no caption is ever half-written, and keeps its permissions.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .caption_text import check_caption_extension
from .captions import caption_diff
from .dataset import MAX_CAPTION_BYTES, Dataset, read_caption
from .paths import (PathRefused, Root, atomic_write_bytes, file_mode_for, make_folder_inside, read_bytes_inside,
                    resolve_in_roots, safe_name, shown)

BACKUP_DIR = ".atelier_caption_backup"  # hidden: dataset scans skip dot-folders


class CaptionWriteError(OSError):
    """A caption set that cannot be written; nothing was changed."""


@dataclass(frozen=True)
class CaptionWrite:
    target: Path  # the real path written (a symlinked sidecar inside the roots is written where it points)
    before: str | None  # None: no sidecar yet
    after: str
    original: bytes | None = None  # the sidecar's bytes as read, for the backup


def _as_roots(roots) -> list[Root]:
    return [r if isinstance(r, Root) else Root("root", Path(r)) for r in roots]


def plan_writes(dataset: Dataset, extension: str = ".txt", out_dir: Path | None = None,
                encoding: str = "utf-8", roots: list[Root] | None = None) -> tuple[list[CaptionWrite], list[str]]:
    """The sidecar each item's caption goes to (beside its image, or under `out_dir/<subset>/`), and its current
    text; every sidecar is resolved inside `roots` before it is read (PathRefused otherwise)."""
    ext = check_caption_extension(extension)  # an allow-list: '', '.', '../x' or '.txt/../x' never reach a path
    roots = roots if roots is not None else [Root("output", out_dir)] if out_dir is not None else []
    writes, notes, seen = [], [], set()
    for subset in dataset.subsets:
        for it in subset.items:
            if it.source.startswith("memory:"):
                notes.append(f"{it.source}: image made in the graph has no file to put a caption beside")
                continue
            stem = Path(it.source).stem
            target = (out_dir / safe_name(subset.name, "subset name") / f"{stem}{ext}" if out_dir is not None
                      else Path(it.source).with_suffix(ext))
            if os.path.lexists(target) or os.path.lexists(target.parent):
                target = resolve_in_roots(target, roots, "caption file")  # refused before anything is read
            if target in seen:
                continue  # the same file in two subsets (e.g. a downscaled copy) shares one sidecar
            seen.add(target)
            original = (read_bytes_inside(target, roots, "caption file", limit=MAX_CAPTION_BYTES)
                        if target.is_file() else None)
            before = read_caption(target, encoding, roots) if original is not None else None
            writes.append(CaptionWrite(target, before, it.caption, original))
    return writes, notes


def _check_writable(folder: Path, roots: list[Root]) -> None:
    """Creates and removes a temp file: catches permissions and read-only/immutable folders, even for root."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".atelier-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CaptionWriteError(f"Caption folder '{shown(folder, roots)}' is not writable ({e.strerror or e}); nothing "
                                "was written. Make it writable, or write a new caption set to the output folder "
                                "instead.") from None


def write_captions(dataset: Dataset, *, allowed_roots: list[Path | Root], extension: str = ".txt",
                   dry_run: bool = True, backup: bool = True, out_dir: Path | None = None, encoding: str = "utf-8",
                   preview: int = 20) -> str:
    """Writes changed captions (or only reports them when dry_run); returns the diff and what was done."""
    roots = [Root("output", out_dir)] if out_dir is not None else _as_roots(allowed_roots)
    try:
        writes, notes = plan_writes(dataset, extension, out_dir, encoding, roots)
    except PathRefused as e:
        raise PathRefused(f"{e} Captions are written only beside dataset images inside the allowed roots or to the "
                          "output folder; nothing was read or written.") from None
    changed = [w for w in writes if w.before != w.after]
    diff = caption_diff([(shown(w.target, roots), w.before or "") for w in writes],
                        [(shown(w.target, roots), w.after) for w in writes], limit=preview)
    lines = [diff] + [f"note: {n}" for n in notes]
    if dry_run:
        return "\n".join(["DRY RUN: nothing written (turn dry_run off to write)."] + lines)
    folders = sorted({w.target.parent for w in changed})
    for folder in folders:
        _check_writable(make_folder_inside(folder, roots, "caption folder"), roots)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backed_up = 0
    if backup:
        for w in changed:
            if w.original is not None:
                dest = make_folder_inside(w.target.parent / BACKUP_DIR / stamp, roots, "backup folder") / w.target.name
                # the bytes read through the checked handle (encoding and all), with the original's permissions
                atomic_write_bytes(dest, w.original, mode=file_mode_for(w.target))
                backed_up += 1
    for w in changed:
        try:
            resolve_in_roots(w.target.parent, roots, "caption folder")  # still inside when it is written
            atomic_write_bytes(w.target, w.after.encode("utf-8"))
        except OSError as e:
            raise CaptionWriteError(f"Writing '{shown(w.target, roots)}' failed ({e.strerror or e}); files written "
                                    f"before it are complete and backed up in {BACKUP_DIR}/{stamp}.") from None
    summary = f"wrote {len(changed)} caption file(s) as UTF-8"
    if backup and backed_up:
        summary += f"; originals backed up to {BACKUP_DIR}/{stamp}/ beside them"
    elif not backup:
        summary += " without backup"
    return "\n".join([summary] + lines)
