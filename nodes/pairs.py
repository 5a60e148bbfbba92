"""Before/after pair nodes: load image pairs into a dataset, train a slider LoRA from them (+1 after, −1 before)."""

from __future__ import annotations

import dataclasses
import os
import json

from .compat import io

from ..core import dataset as ds
from ..core.dataset_ops import unique_source_samples, verify_dataset
from ..core.pairs import PAIR_RULES, load_pairs
from ..trainers.loop import TrainConfig
from ..trainers.network import NetworkConfig
from ..trainers.pair_objective import PairSliderLoss
from .host import DATASET, Progress, dataset_folder_options, resolve_dataset_folder
from .training import common_inputs, reuse_input, train_lora, training_outputs, training_result
from .validate import check_choice, check_names

MAX_RECORDED = 50  # skipped pairs named in the file's metadata


def folder_inputs(side: str, tooltip: str) -> list:
    return [io.Combo.Input(f"{side}_folder", options=dataset_folder_options(), tooltip=tooltip),
            io.String.Input(f"{side}_sub_path", default="",
                            tooltip="Optional path inside the chosen folder; no '..', absolute or drive paths.")]


def scan(folder: str, sub_path: str, name: str, repeats: int, caption_source: str, fixed_caption: str,
         verify_images: bool) -> ds.Dataset:
    """One folder as a one-subset dataset (uncaptioned images get an empty caption), corrupt files dropped."""
    path, root = resolve_dataset_folder(folder, sub_path)
    loaded = ds.scan_folder(path, root, name=name, repeats=repeats, caption_source=caption_source,
                            fixed_caption=fixed_caption, on_missing_caption="empty")
    if verify_images:
        loaded = verify_dataset(loaded, on_progress=Progress(len(unique_source_samples(loaded))))
    return loaded


def same_folder(before_folder: str, before_sub_path: str, after_folder: str, after_sub_path: str) -> bool:
    """Whether both sides resolve to one real folder (each checked inside its root first)."""
    before, _ = resolve_dataset_folder(before_folder, before_sub_path)
    after, _ = resolve_dataset_folder(after_folder, after_sub_path)
    return os.path.realpath(before) == os.path.realpath(after)


class AtelierLoadImagePairs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierLoadImagePairs",
            display_name="Load Image Pairs (Atelier)",
            category="atelier/dataset",
            description="Pairs 'before' and 'after' images (same file name in two folders, or name_after beside "
                        "name in one folder) into a dataset for Train Slider LoRA from Pairs; unpaired images and "
                        "size mismatches are listed and skipped.",
            inputs=[
                *folder_inputs("before", "Folder of 'before' images (the −1 side). With the suffix rule: the one "
                                         "folder holding both."),
                *folder_inputs("after", "Folder of 'after' images (the +1 side), same file names as the 'before' "
                                        "folder. Unused with the suffix rule."),
                io.Combo.Input("rule", options=list(PAIR_RULES), default="same_name",
                               tooltip="same_name: a.png in 'before' pairs with a.png in 'after' (any extension). "
                                       "suffix: a.png pairs with a<suffix>.png in the 'before' folder."),
                io.String.Input("suffix", default="_after",
                                tooltip="The suffix rule's mark of an 'after' image: 'img_after.png' with '_after'."),
                io.Int.Input("repeats", default=1, min=1, max=10000, tooltip="Times each pair is seen per epoch."),
                io.Combo.Input("caption_source", options=list(ds.CAPTION_SOURCES), default="fixed",
                               tooltip="Caption of each pair, from the 'after' image (the 'before' image's when "
                                       "empty): sidecar .txt, filename, folder, or fixed_caption."),
                io.String.Input("fixed_caption", default="",
                                tooltip="Caption of every pair when caption_source is 'fixed' (e.g. 'portrait of "
                                        "a woman'); empty trains unconditioned."),
                io.Boolean.Input("verify_images", default=True,
                                 tooltip="Decode every image now so corrupt files are skipped and listed here."),
            ],
            outputs=[DATASET.Output("dataset_out", display_name="dataset",
                                    tooltip="The pairs: the 'after' subset trains, each with its 'before' partner."),
                     io.String.Output("report", tooltip="Subsets, pair count, and each skipped image with why.")],
        )

    @classmethod
    def execute(cls, before_folder, before_sub_path, after_folder, after_sub_path, rule, suffix, repeats,
                caption_source, fixed_caption, verify_images=True) -> io.NodeOutput:
        check_choice(rule, PAIR_RULES, "rule")  # every refusal before a folder is scanned
        check_choice(caption_source, ds.CAPTION_SOURCES, "caption_source")
        check_names(suffix=suffix)
        args = (repeats, caption_source, fixed_caption, verify_images is True)
        if rule == "same_name" and same_folder(before_folder, before_sub_path, after_folder, after_sub_path):
            raise ValueError("The 'before' and 'after' folders are the same folder, so every image would pair with "
                             "itself and the slider would learn nothing; point after_folder / after_sub_path at the "
                             "'after' images, or use the suffix rule for one folder holding both.")
        before = scan(before_folder, before_sub_path, "before", *args)
        after = scan(after_folder, after_sub_path, "after", *args) if rule == "same_name" else None
        paired, problems = load_pairs(before.subsets[0], after.subsets[0] if after else None, rule, suffix)
        scanned = before.skipped + (after.skipped if after else ())
        result = dataclasses.replace(paired, skipped=scanned + paired.skipped,
                                     notes=before.notes + (after.notes if after else ()))
        report = (f"{len(result.pairs)} pair(s) ({rule}); {len(problems)} image(s) without a usable partner"
                  + "".join(f"\n  skipped {p}" for p in problems) + "\n" + ds.describe(result))
        return io.NodeOutput(result, report, ui={"text": [report]})


def objective_metadata(objective: PairSliderLoss, dataset: ds.Dataset) -> dict[str, str]:
    """atelier_objective: how the slider was trained and which way round to use it."""
    return {"atelier_objective": json.dumps({
        **objective.describe(), "pairs": len(dataset.pairs), "use": "+1 = after, -1 = before",
        "skipped": [f"{s.path}: {s.reason}" for s in dataset.skipped[:MAX_RECORDED]]})}


class AtelierTrainPairSlider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainPairSlider",
            display_name="Train Slider LoRA from Pairs (Atelier)",
            category="atelier/training",
            description="Trains a slider LoRA from before/after pairs: at +strength it turns 'before' into 'after', "
                        "at −strength the other way (kohya's ±1 network multiplier per dataset; Concept Sliders' "
                        "image slider: shared noise and timestep per pair).",
            inputs=[
                *common_inputs(),
                io.Float.Input("pair_strength", default=1.0, min=0.05, max=10.0, step=0.05,
                               tooltip="The LoRA strength that means 'after' (its negative means 'before'); 1.0 "
                                       "is usual."),
                io.Int.Input("rank", default=4, min=1, max=1024, tooltip="LoRA rank; sliders use 4."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Network alpha; effective scale is alpha / rank (sliders: 1)."),
                io.Float.Input("unet_lr", default=2e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="UNet learning rate (sliders: 2e-4). Must be > 0."),
                io.Int.Input("max_steps", default=1000, min=1, max=10_000_000,
                             tooltip="Optimizer steps (sliders: 1000)."),
                io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Same seed, same pairs: the same LoRA (deterministic on CPU)."),
                reuse_input(),
            ],
            outputs=training_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, pair_strength, rank, alpha, unet_lr, max_steps, seed,
                reuse=True) -> io.NodeOutput:
        if not getattr(dataset, "pairs", ()):
            raise ValueError("Train Slider LoRA from Pairs needs a dataset of before/after pairs; this one has none. "
                             "Load it with Load Image Pairs (Atelier).")
        objective = PairSliderLoss(strength=pair_strength)
        config = TrainConfig(max_steps=max_steps, unet_lr=unet_lr, seed=seed, save_every_epochs=0)
        return training_result(*train_lora(model, clip, vae, dataset, output_name, config,
                                           NetworkConfig(rank=rank, alpha=alpha),
                                           node_id=cls.hidden.unique_id if cls.hidden else None,
                                           prompt=cls.hidden.prompt if cls.hidden else None, reuse=reuse is True,
                                           objective=objective, extra_metadata=objective_metadata(objective, dataset)))


NODES = [AtelierLoadImagePairs, AtelierTrainPairSlider]
