"""Dataset views for people: statistics text + chart, contact sheets, IMAGE-batch export. Nothing here knows ComfyUI."""

from __future__ import annotations

import random
from collections import Counter

from PIL import Image

from .dataset import Dataset, DatasetError, Sample
from .draw import bar_chart, contact_sheet
from .images import letterbox
from .prepare import prepare_all, sample_size
from .stats import SubsetCount, bucket_histogram, format_plan, kimg_to_epochs, plan_training


def subset_counts(dataset: Dataset) -> list[SubsetCount]:
    """One count per (subset, repeats) group, so subsets mixing kohya folders with different repeats stay exact."""
    counts = []
    for s in dataset.subsets:
        by_repeats = Counter(it.repeats for it in s.items)
        for repeats, n in sorted(by_repeats.items()):
            name = s.name if len(by_repeats) == 1 else f"{s.name} (×{repeats})"
            counts.append(SubsetCount(name, s.role, n, repeats, mirrored_copies=s.flip == "copies"))
    return counts


def dataset_statistics(dataset: Dataset, batch_size: int = 1, epochs: int = 10, grad_accum: int = 1,
                       kimg: float = 0.0) -> tuple[str, Image.Image]:
    """Planning text (samples, steps, images seen, bucket histogram) and a chart of the same numbers."""
    plan = plan_training(subset_counts(dataset), batch_size=batch_size, epochs=epochs, grad_accum=grad_accum)
    histogram = bucket_histogram([sample_size(s) for s in dataset.samples()])
    text = format_plan(plan, kimg=kimg if kimg > 0 else None, buckets=histogram)
    if kimg > 0:
        train = [s for s in dataset.subsets if s.role == "train"]
        images = sum(len(s.items) for s in train)
        mirrored = bool(train) and all(s.flip in ("copies", "random") for s in train)
        text += (f"\n{kimg:g} kimg over {images} training images{' with mirroring' if mirrored else ''} = "
                 f"{kimg_to_epochs(kimg, images, mirrored):.1f} passes over the images")
    per_subset = bar_chart([(d["name"], float(d["samples"])) for d in plan.per_subset], title="samples per epoch")
    buckets = bar_chart([(label, float(n)) for label, n in histogram], title="prepared sizes (buckets)")
    chart = Image.new("RGB", (max(per_subset.width, buckets.width), per_subset.height + buckets.height), "white")
    chart.paste(per_subset, (0, 0))
    chart.paste(buckets, (0, per_subset.height))
    return text, chart


def pick_samples(dataset: Dataset, count: int, seed: int = 0) -> list[Sample]:
    """`count` samples spread over the dataset, chosen with a local seeded RNG, in dataset order."""
    samples = dataset.samples()
    if count >= len(samples):
        return samples
    chosen = sorted(random.Random(seed).sample(range(len(samples)), count))
    return [samples[i] for i in chosen]


def sample_label(sample: Sample, image: Image.Image) -> str:
    flags = " · mirrored" if sample.mirrored else ""
    return f"[{sample.subset}] {image.width}x{image.height}{flags}\n{sample.item.caption or '(no caption)'}"


def preview_sheet(dataset: Dataset, count: int = 16, columns: int = 4, cell: int = 256, seed: int = 0,
                  workers: int | None = None) -> tuple[Image.Image, str]:
    """Contact sheet of prepared samples with their captions; returns the sheet and a note of skipped files."""
    prepared, skipped = prepare_all(dataset, pick_samples(dataset, count, seed), workers=workers)
    if not prepared:
        raise DatasetError("None of the chosen samples could be prepared: "
                           + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]))
    sheet = contact_sheet([p.image for p in prepared], [sample_label(p.sample, p.image) for p in prepared],
                          columns=columns, cell=cell, title=f"{len(prepared)} of {len(dataset.samples())} samples")
    note = "\n".join(f"skipped {s.path}: {s.reason}" for s in skipped)
    return sheet, note


def prepared_batch(dataset: Dataset, max_images: int = 64, workers: int | None = None
                   ) -> tuple[list[Image.Image], list[str], str]:
    """Prepared images of a small dataset at one size (letterboxed to the most common size when buckets differ)."""
    samples = dataset.samples()[:max_images]
    prepared, skipped = prepare_all(dataset, samples, workers=workers)
    if not prepared:
        raise DatasetError("No image of the dataset could be prepared.")
    size = Counter(p.image.size for p in prepared).most_common(1)[0][0]
    images = [p.image if p.image.size == size else letterbox(p.image, *size) for p in prepared]
    notes = [f"skipped {s.path}: {s.reason}" for s in skipped]
    if len(dataset.samples()) > max_images:
        notes.append(f"only the first {max_images} of {len(dataset.samples())} samples were converted")
    resized = sum(p.image.size != size for p in prepared)
    if resized:
        notes.append(f"{resized} image(s) letterboxed to {size[0]}×{size[1]} to share one batch size")
    return images, [p.sample.item.caption for p in prepared], "\n".join(notes)
