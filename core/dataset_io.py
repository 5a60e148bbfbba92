"""Writes a prepared dataset to disk (images + caption sidecars + manifest) so it can be shared and reloaded.

Nothing here knows ComfyUI; the caller decides the output folder (the nodes put it under ComfyUI's output/).
Folders are named kohya-style `<repeats>_<subset>` so the saved set reloads with the same repeats.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dataset import Dataset
from .images import write_image
from .paths import atomic_write_bytes, safe_name
from .prepare import prepare_stream

MANIFEST = "atelier_dataset.json"


def save_dataset(dataset: Dataset, out_dir: Path, *, image_format: str = "png", workers: int | None = None,
                 on_progress=None) -> dict:
    """Prepares every sample and writes it with its caption; returns the manifest (also written as JSON)."""
    if image_format not in ("png", "jpg", "webp"):
        raise ValueError(f"Unknown image_format '{image_format}'; expected png, jpg or webp.")
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped, used = [], [], set()
    for p in prepare_stream(dataset.samples(), dataset.memory, workers=workers, on_progress=on_progress):
        s = p.sample
        if p.skipped:
            skipped.append({"path": p.skipped.path, "reason": p.skipped.reason})
            continue
        folder = out_dir / safe_name(f"{s.item.repeats}_{s.subset}", "subset folder")
        folder.mkdir(exist_ok=True)
        stem = Path(s.item.source.split(":", 1)[-1]).stem + ("_mirror" if s.mirrored else "")
        stem, n = safe_name(stem.replace(":", "_"), "file name"), 2
        base = stem
        while (folder.name, stem) in used:
            stem, n = f"{base}_{n}", n + 1
        used.add((folder.name, stem))
        pillow_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format]
        write_image(folder / f"{stem}.{image_format}", p.image, pillow_format,
                    **({"quality": 95} if image_format != "png" else {}))
        atomic_write_bytes(folder / f"{stem}.txt", s.item.caption.encode("utf-8"))
        files.append({"file": f"{folder.name}/{stem}.{image_format}", "caption": s.item.caption, "subset": s.subset,
                      "role": s.role, "repeats": s.item.repeats, "source": s.item.source, "mirrored": s.mirrored})
    manifest = {
        "format": "atelier-dataset/1",
        "subsets": [{"name": s.name, "role": s.role, "preparation": s.preparation.key(), "flip": s.flip,
                     "prior_loss_weight": s.prior_loss_weight, "folders": list(s.folders)} for s in dataset.subsets],
        "files": files,
        "skipped": skipped + [{"path": sk.path, "reason": sk.reason} for sk in dataset.skipped],
    }
    atomic_write_bytes(out_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return manifest
