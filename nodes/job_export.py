"""Export Training Job: the Advanced trainer's inputs, prepared once and written as a folder that trains headless.

The folder (output/atelier/jobs/<name>) holds cached latents, frozen caption embeddings when the text encoder does
not train, the settings and the base model reference (checkpoint name and sha256, no server path); see
trainers/job.py for its format and nodes/job.py for the command that trains it.
"""

from __future__ import annotations

import json

import torch
from .compat import io

from ..core.paths import safe_name
from ..trainers.data import kohya_metadata
from ..trainers.job import needs_text_encoder, write_job
from ..trainers.loop import TrainConfig
from ..trainers.memory import MAX_SWAP
from ..trainers.network import NetworkConfig, parse_rank_overrides
from .host import output_subdir
from .provenance import base_model
from .train_adapter import make_encoder, text_encoder_roots
from .training import (APPENDED, CHOICES, CONFIG_TOOLTIPS, NETWORK_TOOLTIPS, appended_inputs, checkpointing_input,
                       common_inputs, config_from, default_targets, encoded_dataset, shown, swap_blocks,
                       swap_input, trainable_host, widgets_for)
from .validate import check_choice, check_names, check_number


NO_PREVIEWS = ("sample_every_steps", "sample_every_epochs")  # a headless run draws no preview samples


def export_job(model, clip, vae, dataset, name: str, config, net: NetworkConfig, node_id, prompt,
               memory: dict | None = None) -> dict:
    """Prepares and encodes the dataset once and writes the job folder with its `memory` settings
    (gradient_checkpointing, blocks_to_swap); returns the node's report."""
    memory = memory or {}
    check_names(output_name=name)
    folder = output_subdir("atelier", "jobs", safe_name(name, "output_name"))
    base = base_model(model, prompt, node_id)  # checkpoint name and sha256: what the runner loads and checks
    with torch.inference_mode(False):
        host = trainable_host(model, clip, False)
        if config.train_text_encoder:
            text_encoder_roots(clip, t5=config.train_t5)  # a CLIP the job cannot train is refused now, not in the run
        net = default_targets(host, net)  # the layers the training node would adapt, fixed in the job
        swap_blocks(host, memory.get("blocks_to_swap", 0))  # a count above the model's blocks: refused now, not later
        samples, skipped, _ = encoded_dataset(dataset, vae, host, config, True, node_id)
        encode = make_encoder(host.clip, pooled=host.denoise.needs_pooled)
        metadata = kohya_metadata(config=config, network_config=net, dataset=dataset, output_name=name, steps=0,
                                  epoch=0, started=0.0, finished=0.0, base=base)
        write_job(folder, name=name, config=config, network=net, base=base.record(), metadata=metadata,
                  samples=samples, encode=encode, **memory)
    where = shown(folder)
    return {"job": where, "samples": len(samples), "skipped": [f"{s.path}: {s.reason}" for s in skipped],
            "base_model": base.record(), "text": ("encoded during the run (the text encoder trains or captions "
                                                  "change per step)" if needs_text_encoder(config)
                                                  else "frozen embeddings in the job"),
            "memory": {"gradient_checkpointing": False, "blocks_to_swap": 0, **memory},
            "command": f"python -m atelier.nodes.job run {where} --comfyui <your ComfyUI folder>",
            "multi_gpu": f"torchrun --nproc-per-node N -m atelier.nodes.job run {where} --comfyui <ComfyUI folder>"}


class AtelierExportTrainingJob(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierExportTrainingJob",
            display_name="Export Training Job (Atelier)",
            category="atelier/training",
            description="Writes the same run as Train LoRA Advanced as a self-contained folder (cached latents, "
                        "captions or frozen text embeddings, settings, base model name and hash) that trains "
                        "without the UI: python -m atelier.nodes.job run, or torchrun on several GPUs.",
            inputs=[
                *common_inputs(),
                *widgets_for(NetworkConfig, NETWORK_TOOLTIPS),
                *widgets_for(TrainConfig, CONFIG_TOOLTIPS, skip=NO_PREVIEWS + APPENDED),
                io.String.Input("target_patterns", default="", multiline=True,
                                tooltip="Regexes (one per line) on layer names / kohya keys that LoRA may adapt; "
                                        "empty = kohya's default blocks."),
                io.String.Input("exclude_patterns", default="", multiline=True,
                                tooltip="Regexes (one per line) of layers never adapted, e.g. 'time_embed'."),
                io.String.Input("rank_overrides", default="", multiline=True,
                                tooltip="Per-block ranks, one 'regex = rank' or 'regex = rank/alpha' per line."),
                io.String.Input("config_json", default="", multiline=True,
                                tooltip="Optional: a training config as JSON; when given it replaces the training "
                                        "widgets above."),
                *appended_inputs(),
                checkpointing_input(optional=True),  # appended: saved workflows keep their widget positions
                swap_input(),
            ],
            outputs=[io.String.Output("job", tooltip="The job folder (output/atelier/jobs/<name>)."),
                     io.String.Output("report", tooltip="JSON: samples, base model, text handling, the command.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, target_patterns, exclude_patterns, rank_overrides,
                config_json, gradient_checkpointing=False, blocks_to_swap=0, **widgets) -> io.NodeOutput:
        for name, options in CHOICES.items():  # ComfyUI does not check V3 combo values; refuse before any work
            check_choice(widgets[name], options, name)
        config, net_overrides, _ = config_from(widgets, config_json)
        config.validate()
        lines = lambda text: tuple(line.strip() for line in text.splitlines() if line.strip())
        net = NetworkConfig(**{k: widgets[k] for k in NETWORK_TOOLTIPS} | (net_overrides or {}),
                            target_patterns=lines(target_patterns), exclude_patterns=lines(exclude_patterns),
                            rank_overrides=parse_rank_overrides(rank_overrides))
        memory = {"gradient_checkpointing": gradient_checkpointing is True,
                  "blocks_to_swap": int(check_number("blocks_to_swap", blocks_to_swap, 0, MAX_SWAP))}
        hidden = cls.hidden
        report = export_job(model, clip, vae, dataset, output_name, config, net,
                            hidden.unique_id if hidden else None, hidden.prompt if hidden else None, memory)
        text = json.dumps(report, indent=1)
        return io.NodeOutput(report["job"], text, ui={"text": [text]})


NODES = [AtelierExportTrainingJob]
