"""Reuse of a finished run: the identity of a training run, recorded in every file it writes, so a later run with the
same settings, data and base model can load the file instead of training again (also after a server restart, when
ComfyUI's in-memory cache is gone). Nothing here knows ComfyUI: the host supplies the base model's identity.

The identity has three parts, each a sha256 over canonical JSON: "settings" (training and network config, and the
LoRA a run continues from), "data" (every image's bytes, caption, repeats and its subset's preparation) and "base"
(what the host says identifies the model, CLIP and VAE: file hash, weight fingerprints, patches). Keeping the parts
apart lets a report say which one changed. Settings that do not change the weights (keep-last, latent cache,
gradient checkpointing, preview samples) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.clips import clip_digest
from ..core.dataset import Dataset
from ..core.paths import open_resolved
from .checkpoint import ResumeMismatch, read_state_config

IDENTITY_KEY = "atelier_run_identity"  # metadata key of every file a run writes: the JSON of RunIdentity.parts()
FINISHED_KEY = "atelier_run_finished"  # "true" only in a file saved after the run's last step
PARTS = ("settings", "data", "base")
WHAT = {"settings": "the training settings", "data": "the dataset (images, captions, repeats or preparation)",
        "base": "the base model (checkpoint, CLIP, VAE or the LoRAs applied to them)"}


def digest(value) -> str:
    """sha256 of canonical JSON (sorted keys; tuples as lists; anything else by its text)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_digest(src: str, memory: dict, frames: tuple[str, ...] = ()):
    """A running sha256 (hashlib object) of an item's image bytes: the file the scan checked (no swapped link), or a
    graph image's pixels."""
    h = hashlib.sha256()
    if src.startswith("memory:"):
        h.update(memory[src].tobytes())
        return h
    if frames:  # a clip: its checked frames' names and bytes, in frame order
        return clip_digest(frames, h)
    with os.fdopen(open_resolved(src, "image"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def data_digest(dataset: Dataset, tick=lambda: None) -> str:
    """The dataset's identity: per subset its name, role, preparation, flip and prior-loss weight; per item its
    image bytes, caption and repeats. Linear in the data; `tick` is called per image (Cancel)."""
    h = hashlib.sha256()
    for subset in dataset.subsets:
        h.update(digest([subset.name, subset.role, subset.preparation.key(), subset.flip,
                         subset.prior_loss_weight] + ([subset.clip_frames] if subset.clip_frames else [])).encode())
        for item in subset.items:
            tick()
            h.update(source_digest(item.source, dataset.memory, item.frames).digest())
            h.update(digest([item.caption, item.repeats]).encode())
    if dataset.pairs:  # which image pairs with which (no pairs: digests as before)
        h.update(digest([[os.path.basename(a), os.path.basename(b)] for a, b in dataset.pairs]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a run's weights depend on, as three digests."""

    settings: str
    data: str
    base: str

    @classmethod
    def of(cls, config: dict, network: dict, data: str, base: dict, start: dict | None = None) -> "RunIdentity":
        """The identity from plain data: the training config, the network config, the data digest, the host's
        base-model record and the LoRA the run starts from (None for a fresh start)."""
        return cls(digest({"config": config, "network": network, "start": start}), data, digest(base))

    def parts(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in PARTS}

    def metadata(self, finished: bool) -> dict[str, str]:
        """The metadata keys every file of the run carries."""
        return {IDENTITY_KEY: json.dumps(self.parts(), sort_keys=True), FINISHED_KEY: "true" if finished else "false"}

    def short(self) -> str:
        return digest(self.parts())[:12]


def recorded(metadata: dict) -> tuple[dict | None, bool]:
    """(identity parts, finished) that a file's metadata records; (None, False) for a file without them or with a
    malformed record (an old or foreign file is never reused)."""
    try:
        parts = json.loads(metadata.get(IDENTITY_KEY, ""))
    except (TypeError, ValueError):
        return None, False
    if not isinstance(parts, dict) or not all(isinstance(parts.get(p), str) for p in PARTS):
        return None, False
    return {p: parts[p] for p in PARTS}, metadata.get(FINISHED_KEY) == "true"


def differences(identity: RunIdentity, metadata: dict) -> list[str]:
    """Why a file cannot stand for this run, in words; [] when it can (same identity, saved after the last step)."""
    parts, finished = recorded(metadata)
    if parts is None:
        return ["it records no run identity (written by another tool or an older Atelier)"]
    changed = [WHAT[p] for p in PARTS if parts[p] != getattr(identity, p)]
    if changed:
        return [f"{' and '.join(changed)} changed since it was trained"]
    return [] if finished else ["its run did not finish (it was stopped or is an intermediate save)"]


def saved_losses(state_dir: Path, identity: RunIdentity) -> list[float]:
    """The per-step losses a finished run kept in its state folder, when that state belongs to this identity; [] when
    it is missing, damaged or from another run (a reused file's chart is then empty, never another run's)."""
    try:
        saved = read_state_config(state_dir)
    except ResumeMismatch:
        return []
    losses = saved.get("losses")
    if saved.get(IDENTITY_KEY) != identity.parts() or not isinstance(losses, list):
        return []
    return [float(x) for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
