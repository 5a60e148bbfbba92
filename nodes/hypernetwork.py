"""Train Hypernetwork: an A1111-format hypernetwork on the loaded MODEL, written where HypernetworkLoader finds it."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from .compat import io

import folder_paths
from comfy_extras.nodes_hypernetwork import load_hypernetwork_patch

from ..core.draw import line_chart, pil_to_image_tensor
from ..core.paths import Root, safe_name
from ..core.paths import shown as shown_in
from ..trainers.hypernetwork import (ACTIVATIONS, SUFFIX, WEIGHT_INITS, Hypernetwork, HypernetworkConfig,
                                     parse_layer_structure, read_hypernetwork, save_hypernetwork)
from ..trainers.loop import Trainer, TrainConfig
from ..trainers.reuse import FINISHED_KEY, IDENTITY_KEY, RunIdentity, differences, saved_losses
from ..trainers.run import RunFiles
from .dataset import dataset_in
from .host import model_roots
from .provenance import base_model
from .reuse import run_identity
from .training import (STATE_NONE, TrainingEvents, encoded_dataset, host_run, host_trainer, resume_folder, resume_hint,
                       resume_options, reuse_input, run_in_host, state_root, trainable_host)
from .validate import check_choice, check_names

FOLDER = "hypernetworks"
PREVIEW = {"negative": "", "seed": 0, "cfg": 7.0, "sampler": "euler", "scheduler": "normal"}  # fixed preview
# settings; Train LoRA Advanced exposes them all


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


def state_folder(path: Path) -> Path:
    """output/atelier/train_state/<name>-hypernetwork: listed for `resume`, apart from a LoRA of the same name."""
    return state_root() / f"{path.stem}-hypernetwork"


def file_fields(path: Path, base, trainer: Trainer, identity: RunIdentity):
    """fields(step, epoch): the A1111 dict's name, step and checkpoint entries of a file saved at that step, and the
    run's identity (finished only after the last step), which both readers ignore."""
    def fields(step: int, epoch: int) -> dict:
        return {"name": path.stem, "step": int(step), "sd_checkpoint": base.legacy_hash or None,
                "sd_checkpoint_name": Path(base.file).stem if base.file else None,
                "optional_info": f"Atelier: epoch {epoch}, {step} of {trainer.total_steps} steps",
                **identity.metadata(finished=step >= trainer.total_steps)}
    return fields


def earlier_hypernetwork(path: Path, identity: RunIdentity) -> tuple[dict | None, str]:
    """(the A1111 dict, "") when `path` holds a finished run of this identity; else (None, why this run trains)."""
    if not path.is_file():
        return None, "no earlier file of this name"
    try:
        sd = read_hypernetwork(path, model_roots("hypernetworks"))  # only a file inside ComfyUI's folders
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:  # damaged or refused: train again
        return None, f"the existing file could not be read ({e})"
    why = differences(identity, {k: sd[k] for k in (IDENTITY_KEY, FINISHED_KEY) if isinstance(sd.get(k), str)})
    return (None, f"the existing file was not reused: {'; '.join(why)}") if why else (sd, "")


def reused_outputs(model, path: Path, sd: dict, identity: RunIdentity, strength: float, config: TrainConfig,
                   hn: HypernetworkConfig):
    """train_hypernetwork's outputs from a finished earlier run of the same identity: nothing is trained."""
    losses = saved_losses(state_folder(path), identity)
    report = {"reuse": f"reused {shown(path)}: it was trained earlier with the same settings, data and base model "
                       f"(run identity {identity.short()}), so nothing was trained. Set reuse to false to train again.",
              "hypernetwork": shown(path), "saved": [shown(path)], "state": shown(state_folder(path)),
              "steps": int(sd.get("step") or 0), "widths": sorted(k for k in sd if isinstance(k, int)),
              "config": config.to_dict(), "hypernetwork_config": {**hn.__dict__, "dropout_structure": hn.dropouts()},
              "losses": losses}
    logging.info("[Atelier] %s", report["reuse"])
    return patched_model(model, path, strength), losses, report


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
                       strength: float, node_id=None, prompt: dict | None = None, resume: str = STATE_NONE,
                       reuse: bool = False, sampling: dict | None = None):
    """Trains (or, with `reuse`, loads a finished earlier run of the same identity), saves
    models/hypernetworks/atelier/<name>.pt and returns (patched model, losses, report)."""
    check_names(output_name=output_name)
    path = hypernetwork_output_path(output_name)  # refuse a bad name before any work
    config.validate()
    resume_dir = resume_folder(resume)
    base = base_model(model, prompt, node_id)
    identity = run_identity(config, hn, dataset, base, model, clip, vae, STATE_NONE, {"trainable": "hypernetwork"})
    earlier, why = earlier_hypernetwork(path, identity) if reuse else (None, "reuse is off")
    if earlier is not None:
        return reused_outputs(model, path, earlier, identity, strength, config, hn)
    with torch.inference_mode(False):
        host = trainable_host(model, clip, train_text_encoder=False)
        samples, skipped, cache = encoded_dataset(dataset, vae, host, config, True, node_id)
        network = Hypernetwork(host.patcher.model.diffusion_model, hn, seed=config.seed).to(host.device)
        events = TrainingEvents(node_id, path.stem, host, host.clip, vae, sampling)  # previews run with the hooks on
        trainer = host_trainer(config, network, host, samples, events)
        run = host_run(trainer, host, RunFiles(path, state_folder(path), 0, shown),
                       file_fields(path, base, trainer, identity),
                       export_dtype=torch.float32, write=save_hypernetwork,  # A1111 saves float32
                       state_extra={IDENTITY_KEY: identity.parts()})  # a reused run's chart shows its losses
        result = run_in_host(run, events, lambda state_dir: resume_hint(state_dir, True, "resume"), FOLDER,
                             resume_dir)  # FOLDER: the new file is listed for HypernetworkLoader and the dropdowns
    state = result.state
    report = {"reuse": f"trained ({why}); run identity {identity.short()}", "hypernetwork": shown(path),
              "saved": [shown(p) for p in result.saved], "state": shown(result.state_dir), "steps": state.step,
              "epochs": state.epoch, "train_seconds": round(result.train_seconds, 3),
              "widths": sorted(int(w) for w in network.pairs), "attention_layers": len(network.targets),
              "latent_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
              "config": config.to_dict(), "hypernetwork_config": {**hn.__dict__, "dropout_structure": hn.dropouts()},
              "samples": events.sample_files, "skipped": [f"{s.path}: {s.reason}" for s in skipped],
              "losses": state.losses, "warnings": result.warnings}
    return patched_model(model, path, strength), state.losses, report


def run_inputs() -> list:
    """resume, the preview samples and reuse: the run-level inputs the LoRA nodes have too."""
    return [
        io.Combo.Input("resume", options=resume_options(), default=STATE_NONE, optional=True,
                       tooltip="Continue a stopped run from its state (output/atelier/train_state/"
                               "<name>-hypernetwork) with the same settings; max_steps or epochs may grow."),
        io.String.Input("sample_prompts", default="", multiline=True, optional=True,
                        tooltip="Preview prompts drawn with the hypernetwork on, one per line, every "
                                "sample_every_epochs (euler, cfg 7, seed 0; saved in output/atelier/samples/"
                                "<name>); empty = no previews."),
        io.Int.Input("sample_every_epochs", default=1, min=1, max=100_000, optional=True,
                     tooltip="Draw the sample prompts every N epochs (only when sample_prompts is set)."),
        io.Int.Input("sample_steps", default=20, min=1, max=200, optional=True,
                     tooltip="Sampling steps of the previews."),
        io.Int.Input("sample_size", default=512, min=64, max=4096, step=8, optional=True,
                     tooltip="Width and height of the square previews."),
        reuse_input(),
    ]


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
                *run_inputs(),
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
                weight_init, lr, epochs, max_steps, batch_size, seed, strength, resume=STATE_NONE, sample_prompts="",
                sample_every_epochs=1, sample_steps=20, sample_size=512, reuse=True) -> io.NodeOutput:
        check_choice(activation, ACTIVATIONS, "activation")  # ComfyUI does not check V3 combo values
        check_choice(weight_init, WEIGHT_INITS, "weight_init")
        hn = HypernetworkConfig(layer_structure=parse_layer_structure(layer_structure), activation_func=activation,
                                is_layer_norm=bool(layer_norm), use_dropout=bool(dropout),
                                weight_initialization=weight_init)
        prompts = [p.strip() for p in str(sample_prompts or "").splitlines() if p.strip()]
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=lr, seed=seed,
                             save_every_epochs=0, sample_every_epochs=sample_every_epochs if prompts else 0)
        sampling = {**PREVIEW, "prompts": prompts, "steps": sample_steps, "width": sample_size,
                    "height": sample_size} if prompts else None
        model_out, losses, report = train_hypernetwork(
            model, clip, vae, dataset, output_name, config, hn, strength,
            node_id=cls.hidden.unique_id if cls.hidden else None, prompt=cls.hidden.prompt if cls.hidden else None,
            resume=resume, reuse=reuse is True, sampling=sampling)
        chart = line_chart(losses, title=f"loss: {report['steps']} steps")
        text = json.dumps(report, indent=1)
        return io.NodeOutput(model_out, pil_to_image_tensor([chart]), text, ui={"text": [text]})


NODES = [AtelierTrainHypernetwork]
