"""Dataset arithmetic for planning a run: samples and steps per epoch, kimg budgets, bucket histograms.

Nothing here knows ComfyUI, and nothing here reads images: the caller passes counts and sizes. The numbers follow
kohya's sd-scripts for LoRA training and StyleGAN's "kimg" (thousands of images shown) for GAN training, so a
user can read off how long a run will be before starting it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .dataset import ROLES  # one list of subset roles: the dataset's


@dataclass
class SubsetCount:
    name: str
    role: str  # "train" or "regularization"
    images: int
    repeats: int
    mirrored_copies: bool = False  # explicit flipped copies double the images


@dataclass
class TrainingPlan:
    samples_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    batch_size: int
    per_subset: list[dict]  # name, role, images, repeats, mirrored_copies, samples
    reg_samples_per_epoch: int
    grad_accum: int = 1


def subset_samples(subset: SubsetCount) -> int:
    """Samples one subset contributes per epoch: images x repeats, doubled when it has explicit mirrored copies."""
    return subset.images * subset.repeats * (2 if subset.mirrored_copies else 1)


def plan_training(subsets: list[SubsetCount], batch_size: int = 1, epochs: int = 10,
                  grad_accum: int = 1) -> TrainingPlan:
    """Samples, steps per epoch and total steps of a kohya-style run over `subsets`.

    Rule (kohya sd-scripts): a subset gives images x repeats samples per epoch, x2 with mirrored copies. When any
    regularization samples exist, kohya pairs each train sample with one reg sample: if the reg subsets hold more
    samples than the train subsets, only as many as there are train samples are used (capped); if they hold fewer,
    kohya repeats the reg set until it matches. So reg samples per epoch = train samples (0 without reg images), and
    samples per epoch = train samples + reg samples. (kohya's first pass adds whole reg images with their repeats,
    so with reg repeats > 1 it may use up to repeats - 1 extra reg samples; that rounding is ignored here.)
    steps per epoch = ceil(samples per epoch / (batch_size x grad_accum)); total steps = steps per epoch x epochs.
    Bucketing can add a few steps per epoch (each bucket's last batch may be short); that is ignored too.
    """
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("grad_accum", grad_accum)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}. Pass a positive whole number.")
    for s in subsets:
        if s.role not in ROLES:
            raise ValueError(f"Subset {s.name!r} has role {s.role!r}; expected one of {', '.join(ROLES)}.")
        if s.images < 0 or s.repeats < 0:
            raise ValueError(f"Subset {s.name!r} has images={s.images}, repeats={s.repeats}; both must be >= 0.")

    train_samples = sum(subset_samples(s) for s in subsets if s.role == "train")
    if train_samples == 0:
        raise ValueError("no training images: every train subset is empty or has 0 repeats "
                         f"({len(subsets)} subsets given). Add images to a subset with role 'train'.")
    reg_available = sum(subset_samples(s) for s in subsets if s.role == "regularization")
    reg_samples = train_samples if reg_available > 0 else 0  # paired one to one with train samples
    samples = train_samples + reg_samples
    steps_per_epoch = math.ceil(samples / (batch_size * grad_accum))
    per_subset = [{"name": s.name, "role": s.role, "images": s.images, "repeats": s.repeats,
                   "mirrored_copies": s.mirrored_copies, "samples": subset_samples(s)} for s in subsets]
    return TrainingPlan(samples_per_epoch=samples, steps_per_epoch=steps_per_epoch,
                        total_steps=steps_per_epoch * epochs, epochs=epochs, batch_size=batch_size,
                        per_subset=per_subset, reg_samples_per_epoch=reg_samples, grad_accum=grad_accum)


def _images_per_pass(images: int, mirrored: bool) -> int:
    if images < 1:
        raise ValueError(f"Need at least 1 image to convert between kimg and epochs; got {images}.")
    return images * (2 if mirrored else 1)  # mirroring makes each image count twice


def kimg_to_epochs(kimg: float, images: int, mirrored: bool = False) -> float:
    """Epochs a StyleGAN budget of `kimg` thousand images shown means over `images` (x2 when mirrored)."""
    if kimg < 0:
        raise ValueError(f"kimg must be >= 0; got {kimg}.")
    return kimg * 1000.0 / _images_per_pass(images, mirrored)


def epochs_to_kimg(epochs: float, images: int, mirrored: bool = False) -> float:
    """Thousands of images shown by `epochs` passes over `images` (x2 when mirrored): the inverse of kimg_to_epochs."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0; got {epochs}.")
    return epochs * _images_per_pass(images, mirrored) / 1000.0


def bucket_histogram(sizes: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """("WxH", count) per distinct size, most common first, ties ordered by width then height."""
    counts = Counter((int(w), int(h)) for w, h in sizes)
    # Numeric tie order keeps 512x512 before 1024x1024, which a plain string sort would not.
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
    return [(f"{w}x{h}", n) for (w, h), n in ordered]


def format_plan(plan: TrainingPlan, *, kimg: float | None = None, buckets: list[tuple[str, int]] | None = None) -> str:
    """Readable multi-line text of `plan`: a row per subset, then totals, the kimg budget and the bucket histogram."""
    headers = ("subset", "role", "images", "repeats", "samples/epoch")
    rows = []
    for d in plan.per_subset:
        images = f"{d['images']:,}" + (" x2 mirrored" if d.get("mirrored_copies") else "")
        rows.append((str(d["name"]), str(d["role"]), images, f"{d['repeats']:,}", f"{d['samples']:,}"))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def table_line(cells) -> str:
        # Names and roles left-aligned, numbers right-aligned, like a spreadsheet.
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [table_line(headers), table_line(["-" * w for w in widths])]
    lines += [table_line(r) for r in rows]
    lines.append("")

    train = plan.samples_per_epoch - plan.reg_samples_per_epoch
    if plan.reg_samples_per_epoch:
        available = sum(d["samples"] for d in plan.per_subset if d["role"] == "regularization")
        lines.append(f"samples per epoch: {plan.samples_per_epoch:,} ({train:,} train + "
                     f"{plan.reg_samples_per_epoch:,} regularization, paired one to one; {available:,} reg available)")
    else:
        lines.append(f"samples per epoch: {plan.samples_per_epoch:,}")
    accum = f", gradient accumulation {plan.grad_accum}" if plan.grad_accum > 1 else ""
    lines.append(f"steps per epoch: {plan.steps_per_epoch:,} at batch size {plan.batch_size}{accum}")
    lines.append(f"total steps: {plan.total_steps:,} for {plan.epochs:,} epochs")
    seen = plan.samples_per_epoch * plan.epochs / 1000.0
    lines.append(f"images seen: {seen:,.1f} kimg over the run")
    if kimg is not None:
        budget_epochs = kimg_to_epochs(kimg, plan.samples_per_epoch)
        budget_steps = math.ceil(kimg * 1000.0 / (plan.batch_size * plan.grad_accum))
        lines.append(f"a {kimg:,g} kimg budget = {budget_epochs:,.1f} epochs of {plan.samples_per_epoch:,} samples "
                     f"(about {budget_steps:,} steps at batch size {plan.batch_size})")
    if buckets:
        total = sum(n for _, n in buckets)
        label_w = max(len(label) for label, _ in buckets)
        count_w = max(len(f"{n:,}") for _, n in buckets)
        lines.append("")
        lines.append(f"buckets ({len(buckets)} sizes, {total:,} images):")
        for label, n in buckets:
            share = f"  {100.0 * n / total:5.1f}%" if total else ""
            lines.append(f"  {label.ljust(label_w)}  {f'{n:,}'.rjust(count_w)}{share}")
    return "\n".join(lines)
