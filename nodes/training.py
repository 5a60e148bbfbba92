"""Training nodes: LoRA on the MODEL and CLIP that ComfyUI already loaded, written where LoraLoader finds it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from ..core.draw import line_chart, pil_to_image_tensor
from ..core.lora_io import save_lora
from ..core.paths import safe_name
from ..trainers.checkpoint import save_state
from ..trainers.data import build_samples, kohya_metadata
from ..trainers.loop import Callbacks, Trainer, TrainConfig
from ..trainers.network import LoRANetwork, NetworkConfig
from .dataset import dataset_in
from .host import output_subdir
from .train_adapter import (TE_INCLUDE, UNET_INCLUDE, ComfyDenoiser, autograd_friendly_clip, encode_latents,
                            interrupted, make_encoder, text_encoder_roots, thaw)

LORA_SUBFOLDER = "atelier"


def send_event(event: str, data: dict) -> None:
    """Websocket event for the web/ chart (no-op outside a server)."""
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(event, data)
    except (ImportError, AttributeError):
        pass


def lora_output_path(output_name: str) -> Path:
    """models/loras/atelier/<name>.safetensors; the name is a plain file name (no separators, no '..')."""
    name = safe_name(output_name, "output_name")
    folder = Path(folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (name if name.endswith(".safetensors") else f"{name}.safetensors")


def train_lora(model, clip, vae, dataset, output_name: str, config: TrainConfig, net_config: NetworkConfig,
               node_id=None):
    """The shared body of the training nodes: returns (model, clip, losses, saved paths)."""
    path = lora_output_path(output_name)  # refuse a bad name before any work
    config.validate()
    with torch.inference_mode(False):
        mp = model.clone()
        comfy.model_management.load_models_gpu([mp], force_full_load=True)
        thaw(mp.model.diffusion_model)
        roots = {"lora_unet": mp.model.diffusion_model}
        if config.train_text_encoder:
            clip.load_model()
            thaw(clip.cond_stage_model)
            roots.update(text_encoder_roots(clip))
        denoise = ComfyDenoiser(mp)
        device = next(mp.model.diffusion_model.parameters()).device
        prep_bar = comfy.utils.ProgressBar(max(len(dataset.samples()), 1), node_id=node_id)
        samples, skipped = build_samples(dataset, lambda imgs: encode_latents(vae, mp, imgs),
                                         on_progress=lambda n: prep_bar.update_absolute(n))
        net = NetworkConfig(**{**net_config.__dict__, "include": (UNET_INCLUDE, TE_INCLUDE)})
        network = LoRANetwork(roots, net, seed=config.seed).to(device)
        bar = comfy.utils.ProgressBar(1, node_id=node_id)
        stop = {"requested": False}

        def on_step(info):
            try:
                bar.update_absolute(info.step, info.total_steps)
            except comfy.model_management.InterruptProcessingException:
                # ComfyUI's progress hook raises on cancel (and clears the flag): finish this step, save, then stop
                stop["requested"] = True
            send_event("atelier.train.step", {"node": node_id, "step": info.step, "total": info.total_steps,
                                              "epoch": info.epoch, "loss": info.loss, "smoothed": info.smoothed_loss,
                                              "lr": info.lr, "samples_per_second": info.samples_per_second})

        trainer = Trainer(config, network, denoise, denoise.model_sampling, samples, make_encoder(clip),
                          Callbacks(on_step=on_step, should_stop=lambda: stop["requested"] or interrupted()), device=device)
        started = time.time()
        with autograd_friendly_clip(clip.cond_stage_model) if config.train_text_encoder else _nothing():
            state = trainer.run()
        sizes = [tuple(s.latent.shape[-2:]) for s in samples]
        meta = kohya_metadata(config=config, network_config=net, dataset=dataset, output_name=path.stem,
                              base_model=getattr(model.model, "model_name", type(model.model).__name__),
                              steps=state.step, epoch=state.epoch, started=started, finished=time.time(),
                              resolution=(max(w for _, w in sizes) * 8, max(h for h, _ in sizes) * 8))
        lora_sd = network.kohya_state_dict(torch.float16)
        save_lora(path, lora_sd, meta)
        state_dir = save_state(output_subdir("atelier", "train_state") / path.stem, trainer, state)
        if state.step < trainer.total_steps:  # interrupted from ComfyUI: everything is saved, then report it
            raise comfy.model_management.InterruptProcessingException(
                f"Training stopped at step {state.step} of {trainer.total_steps}; the LoRA so far is {path} and the "
                f"resume state is {state_dir}.")
        loaded = {k: v.float() for k, v in lora_sd.items()}
        model_out, clip_out = comfy.sd.load_lora_for_models(model, clip, loaded, 1.0, 1.0)
    report = {"lora": str(path), "state": str(state_dir), "steps": state.step, "epochs": state.epoch,
              "skipped": [f"{s.path}: {s.reason}" for s in skipped], "losses": state.losses}
    return model_out, clip_out, state.losses, report


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class AtelierTrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainLoRA",
            display_name="Train LoRA (Atelier)",
            category="atelier/training",
            description="Trains a LoRA on the loaded MODEL (and optionally CLIP) with each family's own objective; "
                        "saves it to models/loras/atelier in kohya format and returns the model with it applied.",
            inputs=[
                io.Model.Input("model", tooltip="The model to train on (SD1.x / SD2.x today)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes captions, and is trained when "
                                              "train_text_encoder is on."),
                io.Vae.Input("vae", tooltip="Encodes the prepared images into latents once, before training."),
                dataset_in("The dataset (Load / Prepare Dataset); image sides must be multiples of 8."),
                io.String.Input("output_name", default="my_lora",
                                tooltip="File name in models/loras/atelier (no folders, no '..')."),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="LoRA rank (dim): 32 for characters, "
                                                                          "64 for styles in the guides."),
                io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Network alpha. Effective scale is alpha / rank; kohya's default is rank/2."),
                io.Float.Input("unet_lr", default=1e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="UNet learning rate (1e-4 is usual for LoRA). Must be > 0."),
                io.Int.Input("epochs", default=10, min=1, max=10000, tooltip="Passes over the dataset (with repeats)."),
                io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                             tooltip="Stop after this many optimizer steps; 0 = train for `epochs`."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per step."),
                io.Boolean.Input("train_text_encoder", default=False,
                                 tooltip="Also train LoRA on the text encoder (attention + MLP layers)."),
                io.Float.Input("te_lr", default=2e-5, min=0.0, max=1.0, step=1e-6,
                               tooltip="Text-encoder learning rate when train_text_encoder is on (guides: 2e-5)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Same seed, same data: the same LoRA (deterministic on CPU)."),
            ],
            outputs=[io.Model.Output("model_out", display_name="model", tooltip="The model with the LoRA applied."),
                     io.Clip.Output("clip_out", display_name="clip", tooltip="The CLIP with the LoRA applied."),
                     io.Image.Output("loss_chart", tooltip="Loss per step (raw and smoothed)."),
                     io.String.Output("report", tooltip="JSON: saved files, steps, losses, skipped images.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, rank, alpha, unet_lr, epochs, max_steps, batch_size,
                train_text_encoder, te_lr, seed) -> io.NodeOutput:
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=unet_lr, te_lr=te_lr,
                             train_text_encoder=train_text_encoder, seed=seed, save_every_epochs=0)
        model_out, clip_out, losses, report = train_lora(model, clip, vae, dataset, output_name, config,
                                                         NetworkConfig(rank=rank, alpha=alpha),
                                                         node_id=cls.hidden.unique_id if cls.hidden else None)
        chart = line_chart(losses, title=f"loss: {report['steps']} steps")
        text = json.dumps(report, indent=1)
        return io.NodeOutput(model_out, clip_out, pil_to_image_tensor([chart]), text, ui={"text": [text]})


NODES = [AtelierTrainLoRA]
