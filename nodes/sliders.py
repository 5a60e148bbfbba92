"""Text-slider training node: a LoRA that moves what the model makes of a prompt from a negative concept toward a
positive one (Concept Sliders / LECO), from prompts alone; the maths lives in trainers/objectives.TextSliderLoss."""

from __future__ import annotations

import dataclasses
import json

import torch
from .compat import io

import comfy.sd

from ..core.dataset import Dataset
from ..trainers.loop import TrainConfig
from ..trainers.network import NetworkConfig
from ..trainers.objectives import SLIDER_ACTIONS, TextSliderLoss
from ..trainers.reuse import IDENTITY_KEY, RunIdentity, digest
from ..trainers.run import RunFiles, run_loras
from ..trainers.slider import SliderPrompts, objective_record, parse_prompts, prompt_samples
from .provenance import base_identity, base_model
from .reuse import earlier_run
from .training import (STATE_NONE, TrainingEvents, host_run, host_trainer, lora_metadata, lora_network,
                       lora_output_path, reuse_input, reused_outputs, run_in_host, state_root, shown, trainable_host,
                       training_outputs, training_report, training_result)
from .validate import check_choice, check_names

CFG = 3.0  # guidance of the partial denoise, as in LECO and the sliders' scripts


@dataclasses.dataclass(frozen=True)
class SliderJob:
    """What a slider run trains: the prompt sets and the objective's settings."""

    sets: tuple[SliderPrompts, ...]
    denoise_steps: int
    bidirectional: bool

    def record(self) -> dict:
        return objective_record(list(self.sets), self.denoise_steps, CFG, self.bidirectional)


def slider_metadata(job: SliderJob, base_metadata):
    """lora_metadata plus the objective: atelier_objective (every prompt), a comment naming them, the resolution."""
    sets = job.sets
    comment = "text slider trained with Atelier: " + "; ".join(
        f"{s.action} '{s.target}' toward '{s.positive}', away from '{s.unconditional}'" for s in sets)

    def metadata(step: int, epoch: int) -> dict[str, str]:
        return {**base_metadata(step, epoch), "atelier_objective": json.dumps(job.record()),
                "ss_training_comment": comment[:2000], "ss_num_train_images": "0",
                "ss_resolution": f"({sets[0].resolution}, {sets[0].resolution})"}
    return metadata


def train_text_slider(model, clip, output_name: str, job: SliderJob, config: TrainConfig, net_config: NetworkConfig,
                      node_id=None, prompt: dict | None = None, reuse: bool = True):
    """Trains (or, with reuse, loads the finished earlier run of) a text slider; train_lora's outputs."""
    check_names(output_name=output_name)
    path = lora_output_path(output_name)
    config.validate()
    base = base_model(model, prompt, node_id)
    identity = RunIdentity.of(config.to_dict(), dataclasses.asdict(net_config), digest(job.record()),
                              base_identity(model, clip, None, base))
    earlier, why = earlier_run(path, identity, state_root() / path.stem) if reuse else (None, "reuse is off")
    if earlier is not None:
        return reused_outputs(model, clip, earlier, path, config, net_config, identity)
    with torch.inference_mode(False):
        host = trainable_host(model, clip, False)  # UNet only, as both reference implementations
        network, net = lora_network(host, net_config, config.seed, STATE_NONE)
        events = TrainingEvents(node_id, path.stem, host, host.clip, None, None)
        channels = host.patcher.model.latent_format.latent_channels
        objective = TextSliderLoss(job.sets, job.denoise_steps, CFG, job.bidirectional)
        trainer = host_trainer(config, network, host, prompt_samples(list(job.sets), channels), events, objective)
        metadata = slider_metadata(job, lora_metadata(config, net, Dataset(), path, base, trainer, identity))
        run = host_run(trainer, host, RunFiles(path, state_root() / path.stem, 0, shown), metadata,
                       state_extra={IDENTITY_KEY: identity.parts()})
        result = run_in_host(run, events, lambda _: "run the node again (it trains from the start)", "loras")
        loaded = {k: v.float() for k, v in result.shipped.items()}
        model_out, clip_out = comfy.sd.load_lora_for_models(model, clip, loaded, 1.0, 1.0)
    report = training_report(result, path, config, net, events, None, [])
    report.update(reuse=f"trained ({why}); run identity {identity.short()}", objective=job.record())
    return model_out, clip_out, result.state.losses, report, run_loras(result.saved, path, path.parent.name)


def slider_job(target, positive, negative, neutral, action, guidance_scale, resolution, denoise_steps, bidirectional,
               prompts_yaml) -> SliderJob:
    """The prompt sets from the widgets, or from prompts_yaml when it is given (it replaces the prompt widgets)."""
    if prompts_yaml.strip():
        sets = parse_prompts(prompts_yaml)
    else:
        sets = [SliderPrompts(target, positive, negative, neutral, action, guidance_scale, resolution)]
        sets[0].validate("the node's prompts")
    return SliderJob(tuple(sets), denoise_steps, bidirectional)


class AtelierTrainTextSlider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainTextSlider",
            display_name="Train Text Slider LoRA (Atelier)",
            category="atelier/training",
            description="Trains a slider LoRA from prompts alone (Concept Sliders / LECO): at +1 the target moves "
                        "toward the positive concept, at -1 toward the negative. No images, no VAE.",
            inputs=[
                io.Model.Input("model", tooltip="The model to train on (SD1.x, SD2.x, SDXL, ...)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the prompts once; it is not trained."),
                io.String.Input("output_name", default="my_slider",
                                tooltip="File name in models/loras/atelier (no folders, no '..')."),
                io.String.Input("target", default="a photo of a person",
                                tooltip="The prompt the slider acts on (what it changes)."),
                io.String.Input("positive", default="a photo of a person, smiling",
                                tooltip="The concept strength +1 moves toward."),
                io.String.Input("negative", default="a photo of a person, frowning",
                                tooltip="The opposite concept (LECO's 'unconditional'); strength -1 moves toward it."),
                io.String.Input("neutral", default="a photo of a person",
                                tooltip="The anchor the slider starts from; usually the target."),
                io.Combo.Input("action", options=list(SLIDER_ACTIONS), default="enhance",
                               tooltip="enhance: +1 adds the positive concept; erase: +1 removes it (ESD-style)."),
                io.Float.Input("guidance_scale", default=4.0, min=-100.0, max=100.0, step=0.1,
                               tooltip="How far the target lies along positive − negative (sliders' yaml: 4)."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8,
                             tooltip="Image size the slider trains at (512 for SD1.x, 1024 for SDXL)."),
                io.Int.Input("denoise_steps", default=50, min=1, max=1000,
                             tooltip="Steps of the schedule the random latent is partly denoised along (papers: 50)."),
                io.Boolean.Input("bidirectional", default=False,
                                 tooltip="Also train strength -1 toward the mirrored target (twice the work)."),
                io.String.Input("prompts_yaml", default="", multiline=True,
                                tooltip="Optional: a LECO / sliders prompts.yaml (a list of 'target: ...' sets) or "
                                        "JSON; when given it replaces the prompt widgets above."),
                io.Int.Input("rank", default=4, min=1, max=1024, tooltip="LoRA rank (sliders: 4)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Network alpha; effective scale alpha / rank (sliders: 1)."),
                io.Float.Input("unet_lr", default=2e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="UNet learning rate (sliders: 2e-4). Must be > 0."),
                io.Int.Input("max_steps", default=1000, min=1, max=1_000_000,
                             tooltip="Optimizer steps (sliders: 1000)."),
                io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Same seed, same prompts: the same slider (deterministic on CPU)."),
                reuse_input(),
            ],
            outputs=training_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, output_name, target, positive, negative, neutral, action, guidance_scale,
                resolution, denoise_steps, bidirectional, prompts_yaml, rank, alpha, unet_lr, max_steps, seed,
                reuse=True) -> io.NodeOutput:
        check_choice(action, SLIDER_ACTIONS, "action")  # ComfyUI does not check V3 combo values
        job = slider_job(target, positive, negative, neutral, action, guidance_scale, resolution, denoise_steps,
                         bidirectional, prompts_yaml)
        config = TrainConfig(max_steps=max_steps, unet_lr=unet_lr, seed=seed, save_every_epochs=0)
        return training_result(*train_text_slider(model, clip, output_name, job, config,
                                                  NetworkConfig(rank=rank, alpha=alpha),
                                                  node_id=cls.hidden.unique_id if cls.hidden else None,
                                                  prompt=cls.hidden.prompt if cls.hidden else None,
                                                  reuse=reuse is True))


NODES = [AtelierTrainTextSlider]
