"""Hidden temp names for atomic writes, and removal of the ones a killed process left behind. Nothing here knows
ComfyUI.

Every atomic write names its temp `.<target name>.atelier-<pid>-<8 hex>.tmp` (a displaced old folder ends in `.old`)
beside the target: hidden, so folder listings never show it, and carrying the writer's process id, so a later save
can tell a leftover of a dead process from a write in progress. remove_stale_temps lists the folder with os.scandir
and compares names with str methods against the one validated target name: no user string is ever a glob pattern.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

TAG = ".atelier-"
STALE_AFTER_SECONDS = 600  # a temp untouched this long is abandoned even if its process id is in use again

# What may follow ".<target name>." in a name we wrote. Fixed patterns: the user's name is never part of a regex.
OURS = re.compile(r"atelier-(?P<pid>\d{1,10})-[0-9a-f]{8}\.(?:tmp|old)")
# Names written by earlier versions: the checkpoint's ".tmp-<pid>", the state folder's ".old-<pid>" (pid known) and
# mkdtemp's ".tmp-XXXXXXXX" / mkstemp's and save_lora's ".XXXXXXXX.tmp" (no pid: judged by age alone).
LEGACY_PID = re.compile(r"(?:tmp|old)-(?P<pid>\d{1,10})")
LEGACY_RANDOM = re.compile(r"tmp-[a-z0-9_]{8}|[a-z0-9_]{8}\.tmp")


def temp_path(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden name beside `target` for writing it (kind "tmp") or for its displaced old copy ("old")."""
    if kind not in ("tmp", "old"):
        raise ValueError(f"temp kind must be 'tmp' or 'old', got {kind!r}.")
    target = Path(target)
    return target.with_name(f".{target.name}{TAG}{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on Windows, where signal 0 would kill it, always assumed)."""
    if pid <= 0 or pid > 2**31 - 1:
        return False  # not a process id any process could have written (0 would address our own group)
    if os.name == "nt":
        return True  # no harmless probe: age alone decides there
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is delivered
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _age_seconds(entry: os.DirEntry, now: float) -> float:
    """Seconds since the entry (or, for a folder, the newest file directly inside it) last changed."""
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        with os.scandir(entry.path) as inner:
            for child in inner:
                newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
    return now - newest


def temp_owner(entry_name: str, target_name: str) -> tuple[bool, int | None]:
    """(is one of our temp names for target_name, the writer's pid when the name records it)."""
    head = f".{target_name}."
    if not entry_name.startswith(head) or len(entry_name) <= len(head):
        return False, None
    rest = entry_name[len(head):]
    for pattern in (OURS, LEGACY_PID):
        m = pattern.fullmatch(rest)
        if m:
            return True, int(m.group("pid"))
    return bool(LEGACY_RANDOM.fullmatch(rest)), None


def remove_stale_temps(folder: str | os.PathLike, target: str | Callable[[str], bool],
                       max_age: float = STALE_AFTER_SECONDS) -> list[str]:
    """Deletes leftovers of interrupted writes of `target` (a file or folder name, or a test on names) in `folder`.

    Only entries named exactly like our temps of that target are touched, and only when the process that wrote
    them is gone or they have not changed for max_age seconds. Symbolic links are never followed or removed.
    Returns the names removed.
    """
    folder = Path(folder)
    removed, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or entry.is_symlink():
            continue
        if isinstance(target, str):
            ours, pid = temp_owner(name, target)
        else:
            cut = name.rfind(TAG) if TAG in name else _legacy_cut(name)
            ours, pid = temp_owner(name, name[1:cut]) if cut > 1 and target(name[1:cut]) else (False, None)
        if not ours:
            continue
        try:
            stale = (pid is not None and not pid_alive(pid)) or _age_seconds(entry, now) > max_age
            if not stale:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # removed meanwhile by its own writer or another clean-up: nothing left to do
        removed.append(name)
    return removed


def _legacy_cut(name: str) -> int:
    """Where the target name ends in an earlier version's temp name (the last '.tmp-', '.old-' or '.X{8}.tmp')."""
    for marker in (".tmp-", ".old-"):
        if marker in name:
            return name.rfind(marker)
    if name.endswith(".tmp") and len(name) > 13:
        return len(name) - 13  # ".XXXXXXXX.tmp"
    return -1
