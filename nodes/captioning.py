"""Captioning nodes: WD14 tagging, one node per caption-edit family, tag frequencies, writing sidecar files."""

from __future__ import annotations

import json
import logging

import comfy.model_management
from .compat import io

from ..core import captions as cap
from ..core.caption_text import CAPTION_EXTENSIONS, check_caption_extension
from ..core import tagger as tg
from ..core import tagger_models as tm
from ..core.caption_io import write_captions
from ..core.dataset import attach_captions, parse_subset_list
from ..core.draw import bar_chart, image_tensor_to_pil, pil_to_image_tensor
from ..core.download import DownloadError
from ..core.paths import PathRefused, safe_name
from .dataset import dataset_in, dataset_out, subsets_in
from .host import Progress, dataset_roots, fetch_tagger_model, output_subdir, resolve_tagger_model, tagger_roots
from .validate import check_choice, check_names

TAGGER_DEVICES = ("auto", "cpu")
DESTINATIONS = ("beside_images", "output_folder")


def tagger_model_options() -> list[str]:
    """The models in models/wd14_tagger, then the registry models the administrator allowed to download."""
    present = tg.list_models(tagger_roots())
    try:
        fetchable = [n + tm.DOWNLOAD_MARK for n in tm.downloadable() if n not in present]
    except (DownloadError, PathRefused) as e:  # a malformed registry: offer none, and say why in the log
        logging.warning("[Atelier] tagger downloads not offered: %s", e)
        fetchable = []
    return present + fetchable or ["(no model in models/wd14_tagger)"]


def load_chosen_tagger(model: str, device: str) -> tg.Tagger:
    """The tagger for a dropdown value, downloading a registry model first when it is offered and not present."""
    name, _ = tm.model_choice(model)
    try:
        model_path, roots = resolve_tagger_model(name)
    except PathRefused:
        if name not in tm.STANDARD_MODELS and name not in tm.downloadable():
            raise
        fetch_tagger_model(name)  # refuses, saying where to get it and how to enable downloads, when not allowed
        model_path, roots = resolve_tagger_model(name)
    return tg.load_tagger(model_path, device, roots)


def tagger_inputs():
    """The widgets shared by the image and dataset taggers (names match core.tagger.TagOptions)."""
    return [
        io.Combo.Input("model", options=tagger_model_options(),
                       tooltip="A WD14 model in models/wd14_tagger: a folder with model.onnx + selected_tags.csv, "
                               "or '<name>.onnx' with '<name>.csv' beside it. '(download)' models are fetched "
                               "from Hugging Face (sha256-checked) on first use, where the administrator allows it."),
        io.Float.Input("general_threshold", default=0.35, min=0.0, max=1.0, step=0.01,
                       tooltip="Keep general tags scoring above this (guides use 0.35–0.5)."),
        io.Float.Input("character_threshold", default=0.85, min=0.0, max=1.0, step=0.01,
                       tooltip="Keep character tags scoring above this."),
        io.Boolean.Input("general_mcut", default=False,
                         tooltip="Choose the general threshold per image by MCut (largest gap between scores) "
                                 "instead of general_threshold."),
        io.Boolean.Input("character_mcut", default=False,
                         tooltip="MCut for character tags (never below 0.15)."),
        io.Boolean.Input("include_characters", default=True, tooltip="Put character tags (first) in the caption."),
        io.Boolean.Input("escape_brackets", default=True,
                         tooltip="Write '(' as '\\(' so prompt syntax does not read tags as weights."),
        io.Boolean.Input("underscores_to_spaces", default=True,
                         tooltip="'long_hair' → 'long hair' (kaomoji such as '^_^' are kept)."),
        io.String.Input("exclude_tags", default="", multiline=True,
                        tooltip="Tags never written, separated by commas or new lines (spaces or underscores)."),
        io.Combo.Input("sort", options=list(tg.SORT_ORDERS), default="confidence",
                       tooltip="Order of tags in the caption: by confidence or alphabetical."),
        io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Images per ONNX run (one cached session)."),
        io.Combo.Input("device", options=list(TAGGER_DEVICES), default="auto",
                       tooltip="auto: CUDA/DirectML when onnxruntime offers it, falling back to the CPU."),
    ]


def tag_options(kw) -> tg.TagOptions:
    check_choice(kw["sort"], tg.SORT_ORDERS, "sort")
    check_choice(kw["device"], TAGGER_DEVICES, "device")
    return tg.TagOptions(kw["general_threshold"], kw["character_threshold"], kw["general_mcut"], kw["character_mcut"],
                         kw["include_characters"], kw["escape_brackets"], kw["underscores_to_spaces"],
                         tuple(cap.parse_tag_list(kw["exclude_tags"])), kw["sort"])


class AtelierTagImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTagImages", display_name="WD14 Tag Images (Atelier)", category="atelier/captioning",
            description="Tags an IMAGE batch with a WD14 ONNX model (one cached session, batched).",
            inputs=[io.Image.Input("images", tooltip="IMAGE batch to tag.")] + tagger_inputs(),
            outputs=[io.String.Output("captions", tooltip="One caption per line, in image order."),
                     io.String.Output("probabilities", tooltip="JSON: per image, tag scores, rating, thresholds.")],
            is_output_node=True,  # shows its captions in the node
        )

    @classmethod
    def execute(cls, images, model, **kw) -> io.NodeOutput:
        options = tag_options(kw)  # refuses bad dropdown values before the model loads
        tagger = load_chosen_tagger(model, kw["device"])
        pil = image_tensor_to_pil(images) if images.shape[0] else []
        results = tg.tag_images(tagger, pil, options, kw["batch_size"])
        captions = "\n".join(text for text, _ in results)
        probs = json.dumps([r.probabilities() for _, r in results], indent=1)
        return io.NodeOutput(captions, probs, ui={"text": [captions]})


class AtelierTagDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTagDataset", display_name="WD14 Tag Dataset (Atelier)", category="atelier/captioning",
            description="Captions every image of a dataset with a WD14 model; Write Captions saves them to files.",
            inputs=[dataset_in(),
                    io.Combo.Input("caption_mode", options=list(tg.MERGE_MODES), default="replace",
                                   tooltip="replace existing captions; append / prepend tags to them; "
                                           "only_missing: tag only images without a caption.")] + tagger_inputs(),
            outputs=[dataset_out(), io.String.Output("probabilities", tooltip="JSON: per file, tag scores.")],
        )

    @classmethod
    def execute(cls, dataset, caption_mode, model, **kw) -> io.NodeOutput:
        check_choice(caption_mode, tg.MERGE_MODES, "caption_mode")
        options = tag_options(kw)
        tagger = load_chosen_tagger(model, kw["device"])
        n = len({it.source for s in dataset.subsets for it in s.items})
        out, details = tg.tag_dataset(dataset, tagger, options, caption_mode, kw["batch_size"], Progress(n))
        skipped = details.get("skipped", {})
        text = f"tagged {n - len(skipped)} image(s)" + "".join(f"\nskipped {k}: {v}" for k, v in skipped.items())
        return io.NodeOutput(out, json.dumps(details, indent=1), ui={"text": [text]})


def filter_inputs():
    """Which items an edit applies to (all of them when left empty)."""
    return [
        io.String.Input("only_filenames", default="",
                        tooltip="Apply only to files whose name matches this wildcard, e.g. 'portrait_*'; "
                                "empty = all."),
        io.String.Input("only_with_tags", default="",
                        tooltip="Apply only to captions that contain all of these tags (comma-separated)."),
        io.String.Input("only_without_tags", default="",
                        tooltip="Apply only to captions that contain none of these tags (comma-separated)."),
        subsets_in(),
    ]


def edit_outputs():
    return [dataset_out(), io.String.Output("changes", tooltip="Which captions changed: before → after.")]


def apply_edit(dataset, op, only_filenames, only_with_tags, only_without_tags, subsets) -> io.NodeOutput:
    where = cap.CaptionFilter(only_filenames.strip(), tuple(cap.parse_tag_list(only_with_tags)),
                              tuple(cap.parse_tag_list(only_without_tags)))
    out, diff = cap.apply_to_dataset(dataset, op, where, parse_subset_list(subsets),
                                     on_progress=Progress(len(dataset)))  # progress bar + Cancel per caption
    return io.NodeOutput(out, diff, ui={"text": [diff]})


class AtelierRemoveTags(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierRemoveTags", display_name="Remove Tags (Atelier)", category="atelier/captioning",
            description="Removes tags: the features a LoRA must memorise, or unrelated tags.",
            inputs=[dataset_in(),
                    io.String.Input("tags", default="", multiline=True,
                                    tooltip="Tags or patterns to remove, separated by commas or new lines."),
                    io.Combo.Input("match", options=list(cap.MATCH_MODES), default="exact",
                                   tooltip="exact (case-insensitive), wildcard ('*hair'), or regex (whole tag).")]
                   + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, tags, match, **f) -> io.NodeOutput:
        check_choice(match, cap.MATCH_MODES, "match")
        patterns = cap.parse_tag_list(tags)
        cap.remove_tags([], patterns, match)  # a bad pattern fails before any caption is touched
        return apply_edit(dataset, lambda t: cap.remove_tags(t, patterns, match), **f)


class AtelierReplaceTags(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierReplaceTags", display_name="Replace Tags (Atelier)", category="atelier/captioning",
            description="Renames tags from a map, one 'old => new' per line; an empty right side removes the tag.",
            inputs=[dataset_in(),
                    io.String.Input("replace_map", default="", multiline=True,
                                    tooltip="One 'old => new' per line, e.g. '1girl => woman'. Lines starting "
                                            "with # are ignored.")] + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, replace_map, **f) -> io.NodeOutput:
        mapping = cap.parse_replace_map(replace_map)
        return apply_edit(dataset, lambda t: cap.replace_tags(t, mapping), **f)


class AtelierAddTags(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierAddTags", display_name="Add Tags (Atelier)", category="atelier/captioning",
            description="Adds tags to every caption, or to those matching the filters (e.g. 'portrait' on close-ups).",
            inputs=[dataset_in(),
                    io.String.Input("tags", default="", multiline=True, tooltip="Tags to add, comma-separated."),
                    io.Combo.Input("position", options=list(cap.POSITIONS), default="end",
                                   tooltip="Where new tags go; tags already present are not repeated.")]
                   + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, tags, position, **f) -> io.NodeOutput:
        check_choice(position, cap.POSITIONS, "position")
        new = cap.parse_tag_list(tags)
        return apply_edit(dataset, lambda t: cap.add_tags(t, new, position), **f)


class AtelierSetTriggerWords(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierSetTriggerWords", display_name="Set Trigger Words (Atelier)",
            category="atelier/captioning",
            description="Puts trigger words first in every caption (added if missing), for keep_tokens shuffling.",
            inputs=[dataset_in(),
                    io.String.Input("trigger_words", default="",
                                    tooltip="Comma-separated words that open every caption, e.g. 'blonde elf'.")]
                   + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, trigger_words, **f) -> io.NodeOutput:
        words = cap.parse_tag_list(trigger_words)
        return apply_edit(dataset, lambda t: cap.move_to_front(t, words), **f)


class AtelierCleanTags(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierCleanTags", display_name="Clean Tags (Atelier)", category="atelier/captioning",
            description="Tidies captions: strip prompt weights, lowercase, drop repeated tags, sort.",
            inputs=[dataset_in(),
                    io.Boolean.Input("strip_weights", default=True, tooltip="'(smile:1.2)' → 'smile'."),
                    io.Boolean.Input("lowercase", default=False, tooltip="Lowercase every tag."),
                    io.Boolean.Input("dedupe", default=True, tooltip="Drop repeated tags (case-insensitive)."),
                    io.Boolean.Input("sort", default=False, tooltip="Sort tags alphabetically after keep_first."),
                    io.Int.Input("keep_first", default=0, min=0, max=32,
                                 tooltip="Leading tags (trigger words) that sorting never moves.")] + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, strip_weights, lowercase, dedupe, sort, keep_first, **f) -> io.NodeOutput:
        def op(tags):
            tags = cap.strip_weights(tags) if strip_weights else tags
            tags = cap.lowercase_tags(tags) if lowercase else tags
            tags = cap.dedupe_tags(tags) if dedupe else tags
            return cap.sort_tags(tags, keep_first) if sort else tags

        return apply_edit(dataset, op, **f)


def clip_token_counter(clip):
    """Counts the text tokens CLIP sees (start/end/padding excluded) with the connected CLIP's own tokenizer."""
    def count(text: str) -> int:
        tokens = clip.tokenize(text, return_word_ids=True)
        first = next(iter(tokens.values()))  # one encoder is enough: SD1/SDXL encoders tokenize alike
        return sum(1 for chunk in first for entry in chunk if entry[2] != 0)  # word id 0: start/end/pad

    return count


class AtelierTruncateCaptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTruncateCaptions", display_name="Truncate Captions (Atelier)",
            category="atelier/captioning",
            description="Drops trailing tags until each caption fits CLIP's 75-token window.",
            inputs=[dataset_in(),
                    io.Int.Input("max_tokens", default=75, min=1, max=1000,
                                 tooltip="Token budget (75 = one CLIP window without start/end tokens)."),
                    io.Int.Input("keep_first", default=1, min=0, max=32, tooltip="Leading tags never dropped."),
                    io.Clip.Input("clip", optional=True,
                                  tooltip="Count with this CLIP's real tokenizer; without it, an estimate is used.")]
                   + filter_inputs(),
            outputs=edit_outputs(),
        )

    @classmethod
    def execute(cls, dataset, max_tokens, keep_first, clip=None, **f) -> io.NodeOutput:
        count = clip_token_counter(clip) if clip is not None else cap.approx_token_count
        check = comfy.model_management.throw_exception_if_processing_interrupted  # Cancel between tokenizations
        return apply_edit(dataset, lambda t: cap.truncate_to_budget(t, count, max_tokens, keep_first, check), **f)


class AtelierTagFrequency(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTagFrequency", display_name="Tag Frequency (Atelier)", category="atelier/captioning",
            description="How many captions carry each tag, to decide what to prune.",
            inputs=[dataset_in(), io.Int.Input("top", default=40, min=1, max=1000, tooltip="Rows in the chart.")],
            outputs=[io.String.Output("table", tooltip="Every tag with its count, most frequent first."),
                     io.Image.Output("chart", tooltip="Bar chart of the top tags.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, dataset, top) -> io.NodeOutput:
        captions = [it.caption for s in dataset.subsets for it in s.items]
        freq = cap.tag_frequencies(captions)
        table = "\n".join(f"{n:5d}  {tag}" for tag, n in freq) or "(no tags)"
        chart = bar_chart([(t, float(n)) for t, n in freq[:top]], title=f"tags in {len(captions)} captions")
        return io.NodeOutput(table, pil_to_image_tensor([chart]), ui={"text": [table]})


class AtelierAttachCaptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierAttachCaptions", display_name="Attach Captions (Atelier)", category="atelier/captioning",
            description="Uses captions from any other node (BLIP, Florence, JoyCaption…): one per dataset image, "
                        "in dataset order, as a list or as lines of one text.",
            inputs=[dataset_in(),
                    io.String.Input("captions", force_input=True,
                                    tooltip="Captions in dataset order: a list of STRINGs, or one STRING with one "
                                            "caption per line.")],
            outputs=[dataset_out()],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, dataset, captions) -> io.NodeOutput:
        texts = captions[0].splitlines() if len(captions) == 1 else list(captions)
        return io.NodeOutput(attach_captions(dataset[0], texts))


class AtelierWriteCaptions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierWriteCaptions", display_name="Write Captions (Atelier)", category="atelier/captioning",
            description="Saves captions as sidecar files beside the images (inside the dataset roots) or as a new "
                        "caption set in output/. Dry run first; originals are backed up.",
            inputs=[dataset_in(),
                    io.Boolean.Input("dry_run", default=True,
                                     tooltip="Only show what would change. Turn off to write."),
                    io.Boolean.Input("backup", default=True,
                                     tooltip="Copy each caption file to .atelier_caption_backup/<time>/ beside it "
                                             "before overwriting."),
                    io.Combo.Input("destination", options=list(DESTINATIONS), default="beside_images",
                                   tooltip="beside_images: update the dataset's own caption files; output_folder: a "
                                           "new set in output/atelier/captions/<set_name>."),
                    io.String.Input("set_name", default="captions",
                                    tooltip="Folder name when destination is output_folder."),
                    io.String.Input("caption_extension", default=".txt",
                                    tooltip=f"Extension of the caption files: one of {', '.join(CAPTION_EXTENSIONS)}."),
                    io.Int.Input("preview", default=20, min=0, max=10000,
                                 tooltip="How many changed files the report lists.")],
            outputs=[io.String.Output("report", tooltip="The diff and what was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, dataset, dry_run, backup, destination, set_name, caption_extension, preview) -> io.NodeOutput:
        check_choice(destination, DESTINATIONS, "destination")  # 'bogus' must not fall through to beside_images
        check_caption_extension(caption_extension)
        check_names(set_name=set_name)
        out_dir = None
        if destination == "output_folder":
            out_dir = output_subdir("atelier", "captions", safe_name(set_name, "set_name"))
        report = write_captions(dataset, allowed_roots=dataset_roots(), extension=caption_extension,
                                dry_run=dry_run, backup=backup, out_dir=out_dir, preview=preview)
        return io.NodeOutput(report, ui={"text": [report]})


NODES = [AtelierTagImages, AtelierTagDataset, AtelierRemoveTags, AtelierReplaceTags, AtelierAddTags,
         AtelierSetTriggerWords, AtelierCleanTags, AtelierTruncateCaptions, AtelierTagFrequency,
         AtelierAttachCaptions, AtelierWriteCaptions]
