"""The run's files: kohya's naming of intermediate saves and keep-last-N pruning. Nothing here knows ComfyUI.

Pruning deletes files, so it never builds a glob or a pattern from the user's run name: it lists the folder and
compares names exactly, and touches only regular files named `<name>-NNNNNN<suffix>` (six ASCII digits).
"""

from __future__ import annotations

import os
from pathlib import Path


def epoch_file(path: Path, epoch: int) -> Path:
    """kohya's naming for intermediate saves: name-000002.safetensors."""
    return path.with_name(f"{path.stem}-{epoch:06d}{path.suffix}")


def prune_epoch_files(path: Path, keep_last: int) -> None:
    """Deletes all but the newest `keep_last` intermediate files of this run: exactly `<name>-NNNNNN<suffix>`,
    matched by comparing names (never a glob built from the user's name), regular files only."""
    if keep_last <= 0:
        return
    prefix, suffix = f"{path.stem}-", path.suffix
    mine = sorted(e.name for e in os.scandir(path.parent)
                  if e.name.startswith(prefix) and e.name.endswith(suffix)
                  and len(e.name) == len(prefix) + 6 + len(suffix) and e.name[len(prefix):-len(suffix)].isdigit()
                  and e.name[len(prefix):-len(suffix)].isascii() and e.is_file(follow_symlinks=False))
    for old in mine[:-keep_last]:
        os.unlink(path.parent / old)
