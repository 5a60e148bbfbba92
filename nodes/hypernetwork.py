"""Train Hypernetwork: an A1111-format hypernetwork on the loaded MODEL, written where HypernetworkLoader finds it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from .compat import io

import folder_paths
from comfy_extras.nodes_hypernetwork import load_hypernetwork_patch

from ..core.draw import line_chart, pil_to_image_tensor
from ..core.paths import Root, safe_name
from ..core.paths import shown as shown_in
from ..trainers.checkpoint import run_environment
from ..trainers.hypernetwork import (ACTIVATIONS, SUFFIX, WEIGHT_INITS, Hypernetwork, HypernetworkConfig,
                                     parse_layer_structure, save_hypernetwork)
from ..trainers.loop import Trainer, TrainConfig, TrainingStopped
from ..trainers.run import RunFiles, TrainingRun
from .dataset import dataset_in
from .host import forget_model_list, output_subdir
from .provenance import base_model
from .train_adapter import make_encoder
from .live import HISTORY
from .training import TrainingEvents, encoded_dataset, send_event, trainable_host
from .validate import check_choice, check_names

FOLDER = "hypernetworks"


def hypernetwork_output_path(output_name: str) -> Path:
    """models/hypernetworks/atelier/<name>.pt; the name is a plain file name (no separators, no '..')."""
    name = safe_name(output_name, "output_name")
    folder = Path(folder_paths.get_folder_paths(FOLDER)[0]) / "atelier"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (name if name.endswith(SUFFIX) else f"{name}{SUFFIX}")


def shown(path: Path) -> str:
    """A file's name as users see it (models/hypernetworks/..., output/...), never an absolute server path."""
    roots = [Root("output", Path(folder_paths.get_output_directory()))]
    roots += [Root(f"models/{FOLDER}", Path(p)) for p in folder_paths.get_folder_paths(FOLDER)]
    return shown_in(path, roots)


def file_fields(path: Path, base, trainer: Trainer):
    """fields(step, epoch): the A1111 dict's name, step and checkpoint entries of a file saved at that step."""
    def fields(step: int, epoch: int) -> dict:
        return {"name": path.stem, "step": int(step), "sd_checkpoint": base.legacy_hash or None,
                "sd_checkpoint_name": Path(base.file).stem if base.file else None,
                "optional_info": f"Atelier: epoch {epoch}, {step} of {trainer.total_steps} steps"}
    return fields


def patched_model(model, path: Path, strength: float):
    """MODEL with the saved file applied the way stock HypernetworkLoader applies it (its own loader, both patches)."""
    patch = load_hypernetwork_patch(str(path), strength)
    if patch is None:
        raise ValueError(f"ComfyUI's hypernetwork loader refused {shown(path)} (unsupported activation); train with "
                         f"one of {', '.join(ACTIVATIONS)}.")
    out = model.clone()
    out.set_model_attn1_patch(patch)
    out.set_model_attn2_patch(patch)
    return out


def train_hypernetwork(model, clip, vae, dataset, output_name: str, config: TrainConfig, hn: HypernetworkConfig,
                       strength: float, node_id=None, prompt: dict | None = None):
    """Trains, saves models/hypernetworks/atelier/<name>.pt and returns (patched model, losses, report)."""
    check_names(output_name=output_name)
    path = hypernetwork_output_path(output_name)  # refuse a bad name before any work
    config.validate()
    base = base_model(model, prompt, node_id)
    with torch.inference_mode(False):
        host = trainable_host(model, clip, train_text_encoder=False)
        samples, skipped, cache = encoded_dataset(dataset, vae, host, config, True, node_id)
        network = Hypernetwork(host.patcher.model.diffusion_model, hn, seed=config.seed).to(host.device)
        events = TrainingEvents(node_id, path.stem, host, clip, vae, None)
        trainer = Trainer(config, network, host.denoise, host.denoise.model_sampling, samples,
                          make_encoder(clip, pooled=host.denoise.needs_pooled), events.callbacks(), device=host.device)
        state_dir = output_subdir("atelier", "hypernetwork_state") / path.stem  # apart from LoRA resume states
        run = TrainingRun(trainer, RunFiles(path, state_dir, 0, shown), file_fields(path, base, trainer),
                          run_environment(trainer, str(host.patcher.model.get_dtype())),
                          export_dtype=torch.float32, write=save_hypernetwork)  # A1111 saves float32
        try:
            result = run.train()
        finally:
            HISTORY.finish(events.run)
    forget_model_list(FOLDER)  # the new file is listed for HypernetworkLoader and the dropdowns
    for warning in result.warnings:
        logging.warning("[Atelier] %s", warning)
    if result.stopped:
        message = run.stopped_message(result, "run this node again (it trains from the start)")
        send_event("atelier.train.stopped", {"node": node_id, "step": result.state.step, "message": message})
        raise TrainingStopped(message)
    state = result.state
    report = {"hypernetwork": shown(path), "saved": [shown(p) for p in result.saved], "steps": state.step,
              "epochs": state.epoch, "train_seconds": round(result.train_seconds, 3),
              "widths": sorted(int(w) for w in network.pairs), "attention_layers": len(network.targets),
              "latent_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
              "config": config.to_dict(), "hypernetwork_config": {**hn.__dict__, "dropout_structure": hn.dropouts()},
              "skipped": [f"{s.path}: {s.reason}" for s in skipped], "losses": state.losses,
              "warnings": result.warnings}
    return patched_model(model, path, strength), state.losses, report


class AtelierTrainHypernetwork(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainHypernetwork",
            display_name="Train Hypernetwork (Atelier)",
            category="atelier/training",
            description="Trains an A1111-format hypernetwork (K/V MLPs on the cross-attention context) on the loaded "
                        "MODEL; saves models/hypernetworks/atelier/<name>.pt, which stock HypernetworkLoader and "
                        "A1111 load, and returns the model with it applied.",
            inputs=[
                io.Model.Input("model", tooltip="The model to train on (SD1.x, SD2.x, SDXL)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the captions (not trained)."),
                io.Vae.Input("vae", tooltip="Encodes the prepared images into latents once, before training."),
                dataset_in("The dataset (Load / Prepare Dataset); image sides must be multiples of 8."),
                io.String.Input("output_name", default="my_hypernetwork",
                                tooltip="File name in models/hypernetworks/atelier, saved as .pt (no folders, no "
                                        "'..')."),
                io.String.Input("layer_structure", default="1, 2, 1",
                                tooltip="Width multipliers of the MLP, first and last 1: '1, 2, 1' (A1111's default) "
                                        "is one hidden layer twice the context width."),
                io.Combo.Input("activation", options=list(ACTIVATIONS), default="linear",
                               tooltip="Activation after each hidden layer; only those both ComfyUI and A1111 load."),
                io.Boolean.Input("layer_norm", default=False, tooltip="LayerNorm after every layer (A1111's "
                                                                      "'Add layer normalization')."),
                io.Boolean.Input("dropout", default=False,
                                 tooltip="Dropout 0.3 after hidden layers while training. Off by default: ComfyUI's "
                                         "loader keeps dropout on when generating, so such a file is noisier there."),
                io.Combo.Input("weight_init", options=list(WEIGHT_INITS), default="Normal",
                               tooltip="A1111's initialisations; the last layer starts at zero either way, so an "
                                       "untrained hypernetwork changes nothing."),
                io.Float.Input("lr", default=1e-5, min=1e-8, max=1.0, step=1e-6,
                               tooltip="Learning rate (AdamW); A1111's default for hypernetworks is 1e-5."),
                io.Int.Input("epochs", default=10, min=1, max=10000, tooltip="Passes over the dataset (with repeats)."),
                io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                             tooltip="Stop after this many optimizer steps; 0 = train for `epochs`."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per step."),
                io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Same seed, same data: the same hypernetwork (deterministic on CPU)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the returned MODEL's hypernetwork, as HypernetworkLoader's "
                                       "(0 = the base model exactly)."),
            ],
            outputs=[io.Model.Output("model_out", display_name="model",
                                     tooltip="The model with the hypernetwork applied at `strength`."),
                     io.Image.Output("loss_chart", tooltip="Loss per step (raw and smoothed)."),
                     io.String.Output("report", tooltip="JSON: saved file, steps, losses, settings.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, layer_structure, activation, layer_norm, dropout,
                weight_init, lr, epochs, max_steps, batch_size, seed, strength) -> io.NodeOutput:
        check_choice(activation, ACTIVATIONS, "activation")  # ComfyUI does not check V3 combo values
        check_choice(weight_init, WEIGHT_INITS, "weight_init")
        hn = HypernetworkConfig(layer_structure=parse_layer_structure(layer_structure), activation_func=activation,
                                is_layer_norm=bool(layer_norm), use_dropout=bool(dropout),
                                weight_initialization=weight_init)
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=lr, seed=seed,
                             save_every_epochs=0)
        model_out, losses, report = train_hypernetwork(
            model, clip, vae, dataset, output_name, config, hn, strength,
            node_id=cls.hidden.unique_id if cls.hidden else None, prompt=cls.hidden.prompt if cls.hidden else None)
        chart = line_chart(losses, title=f"loss: {report['steps']} steps")
        text = json.dumps(report, indent=1)
        return io.NodeOutput(model_out, pil_to_image_tensor([chart]), text, ui={"text": [text]})


NODES = [AtelierTrainHypernetwork]
