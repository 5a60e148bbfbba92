"""From a dataset description to trainer samples: prepare, encode once, keep the latents. Nothing here knows ComfyUI.

The caller passes `encode_images(list of PIL) -> list of (C, h, w) latents` (the VAE and the model's latent scaling
live in nodes/). Subsets with random flip also cache the mirrored image's latent, so a flip during training uses a
real encoding of the mirrored picture rather than a flipped latent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save

from ..core.clips import prepare_clip
from ..core.dataset import BEFORE_ROLE, Dataset, DatasetError, Skipped
from ..core.lora_meta import (bucket_metadata, dataset_dirs, epochs_of, image_counts, minimum_metadata,
                              prior_loss_weight, subsets_record)
from ..core.paths import atomic_write_bytes
from ..core.images import flip_horizontal
from ..core.prepare import prepare_sample_and_mask, prepare_stream
from ..core.provenance import BaseModel
from .loop import TrainSample
from .reuse import source_digest


class LatentCache:
    """Latents on disk, keyed by the source's bytes, its preparation, mirroring and the encoder's identity."""

    def __init__(self, folder: str | Path, encoder_key: str):
        self.folder, self.encoder_key = Path(folder), encoder_key
        self.hits = self.misses = 0

    def key(self, sample, memory: dict) -> str:
        h = source_digest(sample.item.source, memory, sample.item.frames)  # the file the scan checked, no swapped link
        h.update(f"|{sample.preparation.key()}|{sample.mirrored}|{sample.random_flip}|{self.encoder_key}".encode())
        if sample.clip_frames:  # a clip's latent depends on how many of its frames are taken
            h.update(f"|clip{sample.clip_frames}".encode())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            out = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache file is re-encoded, never trusted
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a reader never sees half a file, and a failed write leaves no temp file behind
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def latent_mask(mask_image, latent_shape) -> torch.Tensor:
    """An L mask (H, W) averaged down to the latent grid: (1, h, w) floats in 0..1."""
    import numpy as np
    from PIL import Image

    h, w = latent_shape[-2:]
    small = mask_image.resize((w, h), Image.Resampling.BOX)  # area average over each latent cell
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None]


def build_samples(dataset: Dataset, encode_images: Callable[[list], list], *, size_multiple: int = 8,
                  workers: int | None = None, on_progress=None, cache: LatentCache | None = None,
                  masks: bool = False, encode_clip: Callable[[list], torch.Tensor] | None = None
                  ) -> tuple[list[TrainSample], list[Skipped]]:
    """Prepared, VAE-encoded samples of every subset (mirrored copies included); undecodable files are skipped.

    With a cache, samples already encoded (same bytes, preparation, mirroring and encoder) are neither decoded
    nor encoded again. Clip samples (core/clips.py) are encoded whole by `encode_clip(list of PIL frames) ->
    (C, T', h, w)`, the video VAE's own encoding of the (T, H, W, 3) frames.
    """
    skipped = list(dataset.skipped)
    weights = {s.name: (s.prior_loss_weight if s.role == "regularization" else 1.0) for s in dataset.subsets}
    wanted = dataset.samples()
    latents: dict[int, dict] = {}
    keys: dict[int, str] = {}
    if cache is not None:
        for i, smp in enumerate(wanted):
            try:
                keys[i] = cache.key(smp, dataset.memory)
            except OSError:
                continue  # unreadable now: preparation below reports it
            hit = cache.get(keys[i])
            if hit is not None and (not masks or "has_mask" in hit):
                latents[i] = hit
    for i, smp in enumerate(wanted):
        if smp.clip_frames and i not in latents:
            latents[i] = clip_latents(smp, encode_clip, size_multiple)
            if cache is not None and i in keys:
                cache.put(keys[i], latents[i])
    todo = [i for i in range(len(wanted)) if i not in latents]
    failed: set[int] = set()
    for p in prepare_stream([wanted[i] for i in todo], dataset.memory, workers=workers, on_progress=on_progress,
                            transform=prepare_sample_and_mask):
        index = todo[p.index]
        if p.skipped:
            skipped.append(p.skipped)
            failed.add(index)
            continue
        image, mask_image = p.image
        w, h = image.size
        if w % size_multiple or h % size_multiple:
            raise DatasetError(f"Prepared image '{p.sample.item.source}' is {w}×{h}; the VAE needs sides that are "
                               f"multiples of {size_multiple}. Use Prepare Dataset (crop, letterbox or buckets) with "
                               f"a size divisible by {size_multiple}.")
        images = [image, flip_horizontal(image)] if p.sample.random_flip else [image]
        encoded = encode_images(images)
        latents[index] = {"latent": encoded[0], **({"flipped": encoded[1]} if len(encoded) > 1 else {}),
                          "has_mask": torch.tensor(mask_image is not None)}
        if mask_image is not None:
            latents[index]["mask"] = latent_mask(mask_image, encoded[0].shape)
        if cache is not None and index in keys:
            cache.put(keys[index], latents[index])
    partners = pair_partners(dataset, wanted, latents, failed)
    samples = []
    for i, smp in enumerate(wanted):
        if i in failed or smp.role == BEFORE_ROLE:  # a "before" image trains only as its partner's other half
            continue
        lat = latents[i]
        partner = partners.get(smp.item.source)
        if smp.item.source in partners and partner is None:
            skipped.append(Skipped(smp.item.source, "its 'before' partner could not be prepared; pair skipped"))
            continue
        partner = (partner or {}).get(smp.mirrored, {})
        samples.append(TrainSample(latent=lat["latent"], caption=smp.item.caption, loss_weight=weights[smp.subset],
                                   repeats=smp.item.repeats, random_flip=smp.random_flip,
                                   flipped_latent=lat.get("flipped"), regularization=smp.role == "regularization",
                                   mask=lat.get("mask") if masks else None,
                                   partner_latent=_same_shape(partner.get("latent"), lat["latent"], smp),
                                   partner_flipped=partner.get("flipped")))
    if not samples:
        raise DatasetError("No image of the dataset could be prepared for training: "
                           + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]))
    return balance_regularization(samples), skipped


def clip_latents(smp, encode_clip, size_multiple: int) -> dict[str, torch.Tensor]:
    """One clip sample's latent (and its mirrored clip's, for random flip) from the video VAE."""
    name = Path(smp.item.source).name
    if encode_clip is None:
        raise DatasetError(f"Clip '{name}' needs a video model's VAE (Wan 2.x) to encode its frames together; this "
                           "run encodes single images only. Train clips with a Wan model and its VAE.")
    frames = prepare_clip(smp)
    w, h = frames[0].size
    if w % size_multiple or h % size_multiple:
        raise DatasetError(f"Prepared clip '{name}' is {w}×{h}; the VAE needs sides that are multiples of "
                           f"{size_multiple}. Use Prepare Dataset (crop, letterbox or buckets) with a size divisible "
                           f"by {size_multiple}.")
    out = {"latent": encode_clip(frames), "has_mask": torch.tensor(False)}  # (C, T', h, w); clips carry no mask
    if smp.random_flip:
        out["flipped"] = encode_clip([flip_horizontal(f) for f in frames])
    return out


def pair_partners(dataset: Dataset, wanted: list, latents: dict, failed: set) -> dict:
    """{after source: {mirrored: the "before" image's latents} or None when its partner failed} for image pairs."""
    if not dataset.pairs:
        return {}
    before: dict[tuple[str, bool], dict] = {}
    for i, smp in enumerate(wanted):
        if smp.role == BEFORE_ROLE and i not in failed:
            before[(smp.item.source, smp.mirrored)] = latents[i]
    out: dict[str, dict | None] = {}
    for after_source, before_source in dataset.pairs:
        plain = before.get((before_source, False))
        if plain is None:
            out[after_source] = None
            continue
        # a mirrored copy of the "after" image pairs with the mirrored "before" image (its own encoding if made)
        mirrored = before.get((before_source, True)) or {"latent": plain.get("flipped", plain["latent"].flip(-1))}
        out[after_source] = {False: plain, True: mirrored}
    return out


def _same_shape(partner: torch.Tensor | None, latent: torch.Tensor, smp) -> torch.Tensor | None:
    if partner is not None and partner.shape != latent.shape:
        raise DatasetError(f"Image pair '{Path(smp.item.source).name}': the 'after' latent is {tuple(latent.shape)} "
                           f"but the 'before' latent is {tuple(partner.shape)}; prepare both subsets the same way "
                           "(Prepare Dataset on all subsets).")
    return partner


def balance_regularization(samples: list[TrainSample]) -> list[TrainSample]:
    """Regularization repeats so that reg samples per epoch match training samples per epoch (kohya DreamBooth).

    As kohya does: reg images are taken in order with their own repeats until the count reaches the training
    count (later ones get 0 repeats, i.e. are unused); if they run out first, repeats are added one image at a
    time, round-robin, until the counts match.
    """
    train = sum(s.repeats for s in samples if not s.regularization)
    reg_idx = [i for i, s in enumerate(samples) if s.regularization]
    if not reg_idx or train == 0:
        return [s for s in samples if not s.regularization] if train == 0 and reg_idx else samples
    repeats = {i: 0 for i in reg_idx}
    n, first = 0, True
    while n < train:
        for i in reg_idx:
            if first:
                repeats[i] = samples[i].repeats
                n += samples[i].repeats
            else:
                repeats[i] += 1
                n += 1
            if n >= train:
                break
        first = False
    out = [dataclasses.replace(s, repeats=repeats[i]) if s.regularization else s for i, s in enumerate(samples)]
    return [s for s in out if s.repeats > 0]


def kohya_metadata(*, config, network_config, dataset: Dataset, output_name: str, steps: int, epoch: int,
                   started: float, finished: float, resolution: tuple[int, int] | None = None,
                   base: BaseModel | None = None, total_steps: int | None = None, steps_per_epoch: int | None = None,
                   base_model: str = "", base_model_hash: str = "") -> dict[str, str]:
    """kohya-style `ss_*` training metadata (the safetensors header keys LoRA browsers and A1111 extensions read).

    base describes the model trained on (file name and hashes when known, see core.provenance); without it,
    base_model / base_model_hash name it (a class name and a weights fingerprint). ss_epoch / ss_num_epochs come
    from the step counts when total_steps and steps_per_epoch are given (kohya's convention), else from epoch and
    config.epochs. resolution is only a fallback: ss_resolution is read from the subsets' preparation.
    """
    base = base or BaseModel(model_class=base_model or "unknown", fingerprint=base_model_hash)
    train_dirs, reg_dirs, tags = dataset_dirs(dataset)
    net = network_config
    meta = minimum_metadata(family=base.family, dim=net.rank, alpha=net.alpha, v_prediction=base.v_prediction,
                            network_args={"conv_dim": net.conv_rank, "conv_alpha": net.conv_alpha,
                                          "dropout": net.dropout, "rank_dropout": net.rank_dropout,
                                          "module_dropout": net.module_dropout,
                                          "target_patterns": list(net.target_patterns),
                                          "exclude_patterns": list(net.exclude_patterns),
                                          "rank_overrides": [list(o) for o in net.rank_overrides]})
    meta.update({
        "ss_output_name": output_name,
        "ss_sd_model_name": base.name,
        "ss_learning_rate": str(config.unet_lr),
        "ss_unet_lr": str(config.unet_lr),
        "ss_text_encoder_lr": str(config.te_lr if config.train_text_encoder else 0.0),
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_network_dropout": str(net.dropout),
        "ss_optimizer": config.optimizer,
        "ss_lr_scheduler": config.scheduler,
        "ss_lr_warmup_steps": str(config.warmup_steps),
        "ss_max_train_steps": str(total_steps if total_steps is not None else config.max_steps),
        **(epochs_of(steps, total_steps, steps_per_epoch) if total_steps is not None and steps_per_epoch
           else {"ss_epoch": str(epoch), "ss_num_epochs": str(max(config.epochs, epoch))}),
        "ss_steps": str(steps),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.grad_accum),
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_mixed_precision": config.precision,
        "ss_seed": str(config.seed),
        "ss_noise_offset": str(config.noise_offset),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_caption_dropout_rate": str(config.caption_dropout),
        "ss_caption_tag_dropout_rate": str(config.tag_dropout),
        "ss_shuffle_caption": str(config.caption_shuffle),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_flip_aug": str(any(s.flip == "random" for s in dataset.subsets)),
        **bucket_metadata(dataset),
        **image_counts(dataset),
        "ss_prior_loss_weight": prior_loss_weight(dataset),
        "ss_dataset_dirs": json.dumps(train_dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(tags),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(finished),
        "ss_training_comment": "trained with Atelier",
        "atelier_config": json.dumps(config.to_dict()),
        "atelier_subsets": subsets_record(dataset),
        "atelier_base_model": json.dumps(base.record()),
    })
    if not dataset.subsets and resolution is not None:
        meta["ss_resolution"] = f"({resolution[0]}, {resolution[1]})"
    if base.sha256:  # kohya writes the hashes only when it could read the file
        meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = base.legacy_hash, base.sha256
    if base.patches:
        meta["atelier_base_patches"] = json.dumps({**base.patches, "chain": list(base.chain)})
    return meta
