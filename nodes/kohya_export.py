"""Export Kohya Config: our training settings written back under the sd-scripts keys that exist (TOML or JSON)."""

from __future__ import annotations

import json

from .compat import io

from ..core.paths import atomic_write_bytes, safe_name
from ..trainers.kohya_config import EXPORT_FORMATS, NETWORK_KEYS, export_text, not_exported
from ..trainers.network import NetworkConfig
from .host import output_subdir
from .training import config_from
from .validate import check_choice, check_names


def network_from(config_json: str, overrides: dict | None) -> tuple[NetworkConfig, list[str]]:
    """The network settings: a report's "network" part, a kohya config's own keys, else our defaults (and a note)."""
    try:
        data = json.loads(config_json)
    except json.JSONDecodeError:
        data = None  # a TOML: its network keys came back as `overrides`
    if isinstance(data, dict) and isinstance(data.get("network"), dict):
        part = data["network"]
        return NetworkConfig(**{k: part[k] for k in NETWORK_KEYS.values() if k in part}), []
    if overrides:
        return NetworkConfig(**overrides), []
    return NetworkConfig(), ["The config has no network part: network_dim, network_alpha, ... are Atelier's defaults."]


class AtelierExportKohyaConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierExportKohyaConfig",
            display_name="Export Kohya Config (Atelier)",
            category="atelier/training",
            description="Writes a training config back under the sd-scripts / kohya_ss keys that exist, as an "
                        "sd-scripts --config_file TOML or a kohya JSON; settings with no kohya key are listed.",
            inputs=[
                io.String.Input("config_json", default="", multiline=True,
                                tooltip="A training node's report (connect it), or a pasted report, config JSON, "
                                        "kohya_ss GUI JSON or sd-scripts TOML: the forms config_json of Train LoRA "
                                        "Advanced accepts."),
                io.Combo.Input("format", options=list(EXPORT_FORMATS), default="toml",
                               tooltip="toml: an sd-scripts --config_file (settings it cannot express listed in a "
                                       "comment at the top); json: the same keys as one JSON object."),
                io.String.Input("output_name", default="", optional=True,
                                tooltip="Empty = only show and return the text; else also write output/atelier/"
                                        "configs/<name>.toml or .json (replaced if it exists)."),
            ],
            outputs=[io.String.Output("kohya_config", tooltip="The exported config text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, config_json, format, output_name="") -> io.NodeOutput:
        check_choice(format, EXPORT_FORMATS, "format")
        check_names(output_name=output_name)
        if not isinstance(config_json, str) or not config_json.strip():
            raise ValueError("config_json is empty; connect a training node's report, or paste a report, a config "
                             "JSON, a kohya_ss GUI JSON or an sd-scripts TOML.")
        config, overrides, _ = config_from({}, config_json)
        config.validate()
        network, notes = network_from(config_json, overrides)
        text = export_text(config, network, format, notes)
        shown = text
        if format == "json":  # JSON has no comments: what is not exported shows on the node only
            missing = not_exported(config, network)
            shown = "\n".join([text, *notes, *(f"not exported (no kohya key): {k} = {v}" for k, v in missing.items())])
        if output_name.strip():
            name = f"{safe_name(output_name, 'output_name')}.{format}"
            atomic_write_bytes(output_subdir("atelier", "configs") / name, text.encode("utf-8"))
            shown = f"saved output/atelier/configs/{name}\n{shown}"
        return io.NodeOutput(text, ui={"text": [shown]})


NODES = [AtelierExportKohyaConfig]
