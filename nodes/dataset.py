"""Dataset nodes: load folders into subsets, prepare, mirror, downscale, dedupe, inspect, bridge, save."""

from __future__ import annotations

import time

import numpy as np
from .compat import io

from ..core import dataset as ds
from ..core.caption_text import CAPTION_ENCODINGS, CAPTION_EXTENSIONS, check_caption_encoding, check_caption_extension
from ..core.clips import CLIP_CAPTION_SOURCES, MAX_CLIP_FRAMES, scan_clips
from ..core.dataset_io import save_dataset
from ..core.dataset_ops import dedupe_dataset, unique_source_samples, verify_dataset
from ..core.dedupe import KEEP_POLICIES
from ..core.draw import image_tensor_to_pil, pil_to_image_tensor
from ..core.images import FILTERS, PREP_MODES, parse_color
from ..core.paths import atomic_write_bytes, safe_name
from ..core.summary import dataset_statistics, prepared_batch, preview_sheet
from .host import DATASET, PathRefused, Progress, dataset_folder_options, output_subdir, resolve_dataset_folder
from .validate import check_choice, check_names

IMAGE_FORMATS = ("png", "jpg", "webp")

SUBSETS_TOOLTIP = "Comma-separated subset names this applies to; empty = every subset."


def dataset_in(tooltip="The dataset to work on."):
    return DATASET.Input("dataset", tooltip=tooltip)


def dataset_out():
    # V3 needs output ids distinct from input ids; the socket still reads "dataset".
    return DATASET.Output("dataset_out", display_name="dataset",
                          tooltip="A new dataset description; the input is left unchanged.")


def subsets_in():
    return io.String.Input("subsets", default="", tooltip=SUBSETS_TOOLTIP)


class AtelierLoadDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierLoadDataset",
            display_name="Load Dataset (Atelier)",
            category="atelier/dataset",
            description="Scans a folder of images (+ captions) into a dataset subset. Reads only from allowed roots.",
            inputs=[
                io.Combo.Input("folder", options=dataset_folder_options(),
                               tooltip="Folder inside an allowed root: input/, a `datasets` folder (models/datasets "
                                       "or extra_model_paths.yaml), or saved/ (datasets saved by Atelier)."),
                io.String.Input("sub_path", default="",
                                tooltip="Optional path inside the chosen folder, e.g. '10_korra'. Must stay inside "
                                        "the root: no '..', absolute or drive paths."),
                io.Combo.Input("role", options=list(ds.ROLES), default="train",
                               tooltip="train: images to learn. regularization: class images for prior "
                                       "preservation, weighted by prior_loss_weight."),
                io.Int.Input("repeats", default=0, min=0, max=10000,
                             tooltip="Times each image is seen per epoch. 0 = from kohya folder names ('10_name' "
                                     "→ 10), else 1."),
                io.Combo.Input("caption_source", options=list(ds.CAPTION_SOURCES), default="sidecar",
                               tooltip="sidecar: same-name text file; filename: the file name without counter "
                                       "suffix, '_' → space; folder: the folder name without 'N_'; fixed: "
                                       "fixed_caption."),
                io.String.Input("caption_extension", default=".txt",
                                tooltip=f"Extension of sidecar caption files: one of {', '.join(CAPTION_EXTENSIONS)}."),
                io.String.Input("fixed_caption", default="",
                                tooltip="Caption for every image when caption_source is 'fixed' (e.g. "
                                        "'starsectorportrait')."),
                io.String.Input("caption_encoding", default="utf-8",
                                tooltip="Text encoding of caption files (utf-8; cp1252 for old Windows files). "
                                        "UTF-8 and UTF-16 byte-order marks are always honoured. Allowed: "
                                        f"{', '.join(CAPTION_ENCODINGS)}."),
                io.Combo.Input("on_missing_caption", options=list(ds.MISSING_CAPTION_POLICIES), default="error",
                               tooltip="An image without its caption file: error (stop and name it), skip (list "
                                       "it in the report), or empty (train with an empty caption)."),
                io.Boolean.Input("recursive", default=True, tooltip="Include images in sub-folders."),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Loss weight of this subset when it is a regularization subset (DreamBooth "
                                       "prior preservation); ignored for train subsets."),
                io.String.Input("subset_name", default="",
                                tooltip="Name of the subset in reports and saved sets; empty = the folder name."),
                io.Boolean.Input("verify_images", default=True,
                                 tooltip="Decode every image now so truncated or corrupt files are skipped and "
                                         "reported here rather than during training."),
                DATASET.Input("dataset", optional=True,
                              tooltip="An existing dataset to add this folder to as another subset."),
            ],
            outputs=[DATASET.Output("dataset_out", display_name="dataset",
                                    tooltip="The dataset description (files, captions, subsets)."),
                     io.String.Output("report", tooltip="Subsets, counts, skipped files with reasons.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, sub_path, recursive=True, **_) -> str | float:
        """Re-scan when the folder's files change, even with unchanged widgets (e.g. after Write Captions)."""
        try:
            path, _root = resolve_dataset_folder(folder, sub_path)
        except (PathRefused, OSError):
            return float("nan")  # never equal to itself: execute runs and reports the error
        return ds.folder_fingerprint(path, recursive)

    @classmethod
    def execute(cls, folder, sub_path, role, repeats, caption_source, caption_extension, fixed_caption,
                caption_encoding, on_missing_caption, recursive, prior_loss_weight, subset_name, verify_images,
                dataset=None) -> io.NodeOutput:
        check_choice(role, ds.ROLES, "role")  # every refusal before the folder is scanned
        check_choice(caption_source, ds.CAPTION_SOURCES, "caption_source")
        check_choice(on_missing_caption, ds.MISSING_CAPTION_POLICIES, "on_missing_caption")
        check_caption_extension(caption_extension)
        check_caption_encoding(caption_encoding)
        check_names(subset_name=subset_name)
        path, root = resolve_dataset_folder(folder, sub_path)
        loaded = ds.scan_folder(path, root, name=subset_name.strip() or None, role=role, repeats=repeats,
                                recursive=recursive, caption_source=caption_source,
                                caption_extension=caption_extension, fixed_caption=fixed_caption,
                                caption_encoding=caption_encoding, on_missing_caption=on_missing_caption,
                                prior_loss_weight=prior_loss_weight)
        if verify_images:
            loaded = verify_dataset(loaded, on_progress=Progress(len(unique_source_samples(loaded))))
        result = ds.combine(dataset, loaded) if dataset is not None else loaded
        report = ds.describe(result)
        return io.NodeOutput(result, report, ui={"text": [report]})


class AtelierLoadClips(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierLoadClips",
            display_name="Load Clips (Atelier)",
            category="atelier/dataset",
            description="Scans a folder of short clips for Wan 2.x: one subfolder of frames, or one animated GIF / "
                        "WebP / PNG, per clip, its caption '<clip>.txt' beside it. Each clip is one training sample.",
            inputs=[
                io.Combo.Input("folder", options=dataset_folder_options(),
                               tooltip="Folder inside an allowed root whose subfolders (walk/0001.png …) and animated "
                                       "GIF / WebP / PNG files (turn.gif) are clips, walk.txt beside walk/."),
                io.String.Input("sub_path", default="",
                                tooltip="Optional path inside the chosen folder. Must stay inside the root: no "
                                        "'..', absolute or drive paths."),
                io.Int.Input("clip_frames", default=17, min=1, max=MAX_CLIP_FRAMES, step=4,
                             tooltip="Frames taken from the start of each clip: 1 + 4k (5, 9, 17, 33 …), the Wan "
                                     "VAE's rule; k + 1 latent frames. Folder frames sort by natural name order; "
                                     "an animation's play in order."),
                io.Combo.Input("role", options=list(ds.ROLES), default="train",
                               tooltip="train: clips to learn. regularization: class clips for prior preservation."),
                io.Int.Input("repeats", default=1, min=1, max=10000, tooltip="Times each clip is seen per epoch."),
                io.Combo.Input("caption_source", options=list(CLIP_CAPTION_SOURCES), default="sidecar",
                               tooltip="sidecar: '<clip>.txt' beside the clip folder or file; filename: the clip's "
                                       "name without extension, '_' → space; fixed: fixed_caption."),
                io.String.Input("caption_extension", default=".txt",
                                tooltip=f"Extension of sidecar caption files: one of {', '.join(CAPTION_EXTENSIONS)}."),
                io.String.Input("fixed_caption", default="",
                                tooltip="Caption for every clip when caption_source is 'fixed'."),
                io.Combo.Input("on_missing_caption", options=list(ds.MISSING_CAPTION_POLICIES), default="error",
                               tooltip="A clip without its caption file: error (stop and name it), skip (list it "
                                       "in the report), or empty (train with an empty caption)."),
                DATASET.Input("dataset", optional=True,
                              tooltip="An existing dataset to add these clips to as another subset."),
            ],
            outputs=[DATASET.Output("dataset_out", display_name="dataset",
                                    tooltip="The dataset description (clips, captions, subsets)."),
                     io.String.Output("report",
                                      tooltip="Subsets, clip counts, skipped folders and still images with reasons.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, sub_path, **_) -> str | float:
        """Re-scan when any frame or caption changes, even with unchanged widgets."""
        try:
            path, _root = resolve_dataset_folder(folder, sub_path)
        except (PathRefused, OSError):
            return float("nan")  # never equal to itself: execute runs and reports the error
        return ds.folder_fingerprint(path, True)

    @classmethod
    def execute(cls, folder, sub_path, clip_frames, role, repeats, caption_source, caption_extension, fixed_caption,
                on_missing_caption, dataset=None) -> io.NodeOutput:
        check_choice(role, ds.ROLES, "role")  # every refusal before the folder is scanned
        check_choice(caption_source, CLIP_CAPTION_SOURCES, "caption_source")
        check_choice(on_missing_caption, ds.MISSING_CAPTION_POLICIES, "on_missing_caption")
        check_caption_extension(caption_extension)
        path, root = resolve_dataset_folder(folder, sub_path)
        loaded = scan_clips(path, root, frames=clip_frames, role=role, repeats=repeats, caption_source=caption_source,
                            caption_extension=caption_extension, fixed_caption=fixed_caption,
                            on_missing_caption=on_missing_caption)
        result = ds.combine(dataset, loaded) if dataset is not None else loaded
        report = ds.describe(result)
        return io.NodeOutput(result, report, ui={"text": [report]})


class AtelierPrepareDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierPrepareDataset",
            display_name="Prepare Dataset (Atelier)",
            category="atelier/dataset",
            description="Sets how subsets become training pixels: crop, letterbox or aspect-ratio buckets.",
            inputs=[
                dataset_in(),
                io.Combo.Input("mode", options=list(PREP_MODES), default="crop",
                               tooltip="crop: centre crop to the target; letterbox: fit inside and pad with "
                                       "pad_color; buckets: kohya-style aspect buckets of the target area; none: "
                                       "keep sizes."),
                io.Int.Input("width", default=512, min=64, max=8192, step=8, tooltip="Target width (buckets: "
                             "width × height is the maximum area)."),
                io.Int.Input("height", default=512, min=64, max=8192, step=8, tooltip="Target height."),
                io.String.Input("pad_color", default="black",
                                tooltip="Letterbox bar colour: white, black, gray, #rrggbb or r,g,b."),
                io.String.Input("background", default="white",
                                tooltip="Colour transparent pixels are composited onto (3D renders with alpha): "
                                        "white, black, gray, #rrggbb or r,g,b."),
                io.Combo.Input("filter", options=list(FILTERS), default="lanczos",
                               tooltip="Resampling filter. lanczos: sharp, reduces by whole factors first; area: "
                                       "box average."),
                io.Int.Input("bucket_step", default=64, min=8, max=256, step=8,
                             tooltip="Bucket sides are multiples of this (kohya: 64)."),
                io.Boolean.Input("no_upscale", default=False,
                                 tooltip="Buckets only: images smaller than the target area keep their scale "
                                         "(kohya's bucket_no_upscale)."),
                subsets_in(),
            ],
            outputs=[dataset_out()],
        )

    @classmethod
    def execute(cls, dataset, mode, width, height, pad_color, background, filter, bucket_step, no_upscale,
                subsets) -> io.NodeOutput:
        check_choice(mode, PREP_MODES, "mode")
        check_choice(filter, FILTERS, "filter")
        prep = ds.Preparation(mode=mode, width=width, height=height, pad_color=parse_color(pad_color),
                              background=parse_color(background), filter=filter, bucket_step=bucket_step,
                              no_upscale=no_upscale)
        return io.NodeOutput(ds.with_preparation(dataset, prep, ds.parse_subset_list(subsets)))


class AtelierMirrorDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierMirrorDataset",
            display_name="Mirror Dataset (Atelier)",
            category="atelier/dataset",
            description="Horizontal-flip augmentation: a random flip per training step, or explicit mirrored copies.",
            inputs=[
                dataset_in(),
                io.Combo.Input("mode", options=list(ds.FLIP_MODES), default="random",
                               tooltip="random: flip each sample with probability ½ per step; copies: add a "
                                       "mirrored copy of every image (doubles samples); none: switch mirroring off."),
                subsets_in(),
                io.String.Input("exclude_subsets", default="",
                                tooltip="Comma-separated subsets never mirrored (text, asymmetric characters)."),
            ],
            outputs=[dataset_out()],
        )

    @classmethod
    def execute(cls, dataset, mode, subsets, exclude_subsets) -> io.NodeOutput:
        check_choice(mode, ds.FLIP_MODES, "mode")
        return io.NodeOutput(ds.with_flip(dataset, mode, ds.parse_subset_list(subsets),
                                          ds.parse_subset_list(exclude_subsets)))


class AtelierAddDownscaledCopy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierAddDownscaledCopy",
            display_name="Add Downscaled Copy (Atelier)",
            category="atelier/dataset",
            description="Adds a copy of subsets prepared at a smaller size with its own repeats (e.g. 384² × 2).",
            inputs=[
                dataset_in(),
                io.Int.Input("size", default=384, min=64, max=4096, step=8,
                             tooltip="Side of the copy; its preparation mode is the subset's."),
                io.Int.Input("repeats", default=2, min=1, max=10000,
                             tooltip="Repeats of the copy (the guide: originals ×10, 384² copy ×2)."),
                subsets_in(),
            ],
            outputs=[dataset_out()],
        )

    @classmethod
    def execute(cls, dataset, size, repeats, subsets) -> io.NodeOutput:
        return io.NodeOutput(ds.add_downscaled_copy(dataset, size, repeats, ds.parse_subset_list(subsets)))


class AtelierCombineDatasets(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCombineDatasets",
            display_name="Combine Datasets (Atelier)",
            category="atelier/dataset",
            description="One dataset holding every subset of the inputs (e.g. train + regularization).",
            inputs=[
                DATASET.Input("dataset_a", tooltip="First dataset."),
                DATASET.Input("dataset_b", tooltip="Second dataset."),
                DATASET.Input("dataset_c", optional=True, tooltip="Optional third dataset."),
                DATASET.Input("dataset_d", optional=True, tooltip="Optional fourth dataset."),
            ],
            outputs=[dataset_out()],
        )

    @classmethod
    def execute(cls, dataset_a, dataset_b, dataset_c=None, dataset_d=None) -> io.NodeOutput:
        return io.NodeOutput(ds.combine(dataset_a, dataset_b, dataset_c, dataset_d))


class AtelierDedupeDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierDedupeDataset",
            display_name="Dedupe Dataset (Atelier)",
            category="atelier/dataset",
            description="Drops near-duplicate images (perceptual hash; mirrored and letterboxed copies count). "
                        "Never deletes files; writes a JSON report to output/atelier/reports.",
            inputs=[
                dataset_in(),
                io.Int.Input("threshold", default=6, min=0, max=64,
                             tooltip="Maximum Hamming distance (of 64 bits) between duplicates. 0: identical "
                                     "hashes only; 6: resized/recompressed copies; >12 risks false matches."),
                io.Combo.Input("keep", options=list(KEEP_POLICIES), default="largest",
                               tooltip="Which image of a duplicate group stays: largest (most pixels), sharpest, "
                                       "or first in folder order."),
                io.Boolean.Input("flip_aware", default=True, tooltip="Treat a mirrored copy as a duplicate."),
                io.Boolean.Input("border_aware", default=True,
                                 tooltip="Ignore uniform borders, so a letterboxed copy is a duplicate."),
                io.String.Input("report_name", default="dedupe",
                                tooltip="File name prefix of the JSON report in output/atelier/reports."),
            ],
            outputs=[dataset_out(), io.String.Output("report", tooltip="Kept and dropped files with distances.")],
        )

    @classmethod
    def execute(cls, dataset, threshold, keep, flip_aware, border_aware, report_name) -> io.NodeOutput:
        check_choice(keep, KEEP_POLICIES, "keep")
        check_names(report_name=report_name)
        name = safe_name(report_name, "report_name")
        out, report = dedupe_dataset(dataset, threshold, keep, flip_aware, border_aware,
                                     on_progress=Progress(len(unique_source_samples(dataset))))
        path = output_subdir("atelier", "reports") / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        atomic_write_bytes(path, report.to_json().encode("utf-8"))
        text = report.summary() + f"\nreport: {path}"
        return io.NodeOutput(out, text, ui={"text": [text]})


class AtelierDatasetStats(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierDatasetStats",
            display_name="Dataset Statistics (Atelier)",
            category="atelier/dataset",
            description="Images, repeats, samples and steps per epoch, total steps, images-seen budget, buckets.",
            inputs=[
                dataset_in(),
                io.Int.Input("batch_size", default=1, min=1, max=1024, tooltip="Training batch size."),
                io.Int.Input("epochs", default=10, min=1, max=100000, tooltip="Planned epochs."),
                io.Int.Input("grad_accum", default=1, min=1, max=1024,
                             tooltip="Gradient accumulation steps (optimizer steps = batches / this)."),
                io.Float.Input("kimg", default=0.0, min=0.0, max=1e7, step=10.0,
                               tooltip="Optional images-seen budget in thousands (StyleGAN's kimg); 0 = off. Shows "
                                       "how many passes over the images it means."),
            ],
            outputs=[io.String.Output("text", tooltip="The statistics as text."),
                     io.Image.Output("chart", tooltip="Samples per subset and bucket histogram as an image.")],
            is_output_node=True,  # shows its text in the node, so it runs even when nothing is connected
        )

    @classmethod
    def execute(cls, dataset, batch_size, epochs, grad_accum, kimg) -> io.NodeOutput:
        text, chart = dataset_statistics(dataset, batch_size, epochs, grad_accum, kimg)
        return io.NodeOutput(text, pil_to_image_tensor([chart]), ui={"text": [text]})


class AtelierPreviewDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierPreviewDataset",
            display_name="Preview Dataset (Atelier)",
            category="atelier/dataset",
            description="A labelled contact sheet of prepared samples with their captions.",
            inputs=[
                dataset_in(),
                io.Int.Input("count", default=16, min=1, max=256, tooltip="How many samples to show."),
                io.Int.Input("columns", default=4, min=1, max=32, tooltip="Thumbnails per row."),
                io.Int.Input("cell", default=256, min=64, max=1024, step=16, tooltip="Thumbnail box size in pixels."),
                io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Which samples are picked (same seed, same pick)."),
            ],
            outputs=[io.Image.Output("sheet", tooltip="The contact sheet (connect Preview Image or Save Image)."),
                     io.String.Output("notes", tooltip="Files that could not be prepared, if any.")],
        )

    @classmethod
    def execute(cls, dataset, count, columns, cell, seed) -> io.NodeOutput:
        sheet, notes = preview_sheet(dataset, count, columns, cell, seed)
        return io.NodeOutput(pil_to_image_tensor([sheet]), notes)


class AtelierImagesToDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierImagesToDataset",
            display_name="Images to Dataset (Atelier)",
            category="atelier/dataset",
            description="Turns an IMAGE batch generated in the graph (and captions) into a dataset subset.",
            inputs=[
                io.Image.Input("images", tooltip="IMAGE batch (B, H, W, C) to train on."),
                io.String.Input("captions", default="", multiline=True,
                                tooltip="One caption per line, one line per image; a single line applies to all."),
                io.String.Input("subset_name", default="graph", tooltip="Name of the new subset."),
                io.Combo.Input("role", options=list(ds.ROLES), default="train", tooltip="train or regularization."),
                io.Int.Input("repeats", default=1, min=1, max=10000, tooltip="Times each image is seen per epoch."),
                DATASET.Input("dataset", optional=True, tooltip="An existing dataset to add these images to."),
            ],
            outputs=[dataset_out()],
        )

    @classmethod
    def execute(cls, images, captions, subset_name, role, repeats, dataset=None) -> io.NodeOutput:
        check_choice(role, ds.ROLES, "role")
        check_names(subset_name=subset_name)
        arrays = [np.asarray(im) for im in image_tensor_to_pil(images)] if images.shape[0] else []
        lines = [l for l in captions.splitlines() if l.strip()] if captions.strip() else []
        made = ds.from_arrays(arrays, lines, name=subset_name.strip() or "graph", role=role, repeats=repeats,
                              key_prefix=f"{subset_name}-{time.time_ns()}")
        return io.NodeOutput(ds.combine(dataset, made) if dataset is not None else made)


class AtelierDatasetToImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierDatasetToImages",
            display_name="Dataset to Images (Atelier)",
            category="atelier/dataset",
            description="Prepared images of a small dataset as one IMAGE batch, with their captions.",
            inputs=[
                dataset_in(),
                io.Int.Input("max_images", default=64, min=1, max=4096,
                             tooltip="Stop after this many samples (one IMAGE batch holds them all in memory)."),
            ],
            outputs=[io.Image.Output("images", tooltip="Prepared images; differing sizes are letterboxed to the "
                                                        "most common one."),
                     io.String.Output("captions", tooltip="One caption per line, in image order."),
                     io.String.Output("notes", tooltip="Skipped or letterboxed images, if any.")],
        )

    @classmethod
    def execute(cls, dataset, max_images) -> io.NodeOutput:
        images, captions, notes = prepared_batch(dataset, max_images)
        return io.NodeOutput(pil_to_image_tensor(images), "\n".join(captions), notes)


class AtelierSaveDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierSaveDataset",
            display_name="Save Dataset (Atelier)",
            category="atelier/dataset",
            description="Writes prepared images + caption files + a manifest to output/atelier/datasets/<name>; "
                        "reload it with Load Dataset from 'saved/<name>'.",
            inputs=[
                dataset_in(),
                io.String.Input("name", default="prepared", tooltip="Folder name under output/atelier/datasets."),
                io.Combo.Input("image_format", options=list(IMAGE_FORMATS), default="png",
                               tooltip="png is lossless; jpg/webp at quality 95 are smaller."),
            ],
            outputs=[io.String.Output("report", tooltip="Where the set was written and how many files.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, dataset, name, image_format) -> io.NodeOutput:
        check_choice(image_format, IMAGE_FORMATS, "image_format")
        check_names(name=name)
        out_dir = output_subdir("atelier", "datasets", name)
        manifest = save_dataset(dataset, out_dir, image_format=image_format,
                                on_progress=Progress(len(dataset.samples())))
        text = f"saved {len(manifest['files'])} images to {out_dir} ({len(manifest['skipped'])} skipped)"
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [AtelierLoadDataset, AtelierLoadClips, AtelierPrepareDataset, AtelierMirrorDataset, AtelierAddDownscaledCopy,
         AtelierCombineDatasets, AtelierDedupeDataset, AtelierDatasetStats, AtelierPreviewDataset,
         AtelierImagesToDataset, AtelierDatasetToImages, AtelierSaveDataset]
