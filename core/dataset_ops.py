"""Dataset-wide passes that decode images: verification and near-duplicate removal. Nothing here knows ComfyUI."""

from __future__ import annotations

from .dataset import Dataset, DatasetError, drop_sources
from .dedupe import DedupeReport, HashedImage, dedupe, image_hashes, sharpness, trim_borders
from .prepare import load_rgb, prepare_stream


def unique_source_samples(dataset: Dataset):
    """One sample per distinct source file (downscaled copies and mirrored copies share their source)."""
    seen, out = set(), []
    for s in dataset.samples():
        if s.item.source not in seen:
            seen.add(s.item.source)
            out.append(s)
    return out


def verify_dataset(dataset: Dataset, workers: int | None = None, on_progress=None) -> Dataset:
    """Decodes every source once; files that fail are dropped from every subset and listed with their reason."""
    samples = unique_source_samples(dataset)
    bad: dict[str, str] = {}
    for p in prepare_stream(samples, dataset.memory, transform=lambda s, m: load_rgb(s, m) and None,
                            workers=workers, on_progress=on_progress):
        if p.skipped:
            bad[p.skipped.path] = p.skipped.reason
    out = dataset
    for reason in sorted(set(bad.values())):
        out = drop_sources(out, {k for k, v in bad.items() if v == reason}, reason)
    if not out.subsets:
        raise DatasetError("No image of the dataset could be decoded: "
                           + "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:5]))
    return out


def dedupe_dataset(dataset: Dataset, threshold: int = 6, keep: str = "largest", flip_aware: bool = True,
                   border_aware: bool = True, workers: int | None = None, on_progress=None
                   ) -> tuple[Dataset, DedupeReport]:
    """Hashes each distinct source (perceptual, flip/border-aware), groups near-duplicates, keeps one per group.

    Source files are never touched; dropped images only leave the returned dataset and are listed in the report.
    """
    samples = unique_source_samples(dataset)

    def hash_one(sample, memory):
        rgb, _ = load_rgb(sample, memory)
        # Size and sharpness of the content, not the canvas: a letterboxed copy must not win "largest" by its bars.
        content = trim_borders(rgb) if border_aware else rgb
        h, fh = image_hashes(content, flip_aware=flip_aware, border_aware=False)
        return HashedImage(sample.item.source, h, fh, content.width, content.height, sharpness(content))

    hashed, failed = [], {}
    for p in prepare_stream(samples, dataset.memory, transform=hash_one, workers=workers, on_progress=on_progress):
        if p.skipped:
            failed[p.skipped.path] = p.skipped.reason
        else:
            hashed.append(p.image)
    report = dedupe(hashed, threshold=threshold, keep=keep)
    out = drop_sources(dataset, {d["key"] for d in report.dropped}, "near-duplicate (see dedupe report)")
    for path, reason in failed.items():
        out = drop_sources(out, {path}, reason)
    return out, report
