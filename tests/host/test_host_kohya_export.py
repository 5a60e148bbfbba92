"""Export Kohya Config through the API: a pasted training report comes back as an sd-scripts TOML (written
atomically to output/atelier/configs) that tomllib reads, with the report's network and training settings."""

import json
import tomllib

import pytest

# A training report as the training nodes return it (only the parts the export reads).
REPORT = {"lora": "models/loras/atelier/x.safetensors", "steps": 40,
          "config": {"epochs": 6, "unet_lr": 3e-4, "te_lr": 5e-5, "train_text_encoder": True, "optimizer": "adamw",
                     "scheduler": "cosine", "seed": 7, "ema_decay": 0.99},
          "network": {"rank": 12, "alpha": 6.0, "conv_rank": 0, "conv_alpha": 1.0, "dropout": 0.0,
                      "rank_dropout": 0.0, "module_dropout": 0.0, "exclude_patterns": [], "rank_overrides": []}}


def export_prompt(config_json: str, fmt: str, output_name: str = "") -> dict:
    return {"1": {"class_type": "AtelierExportKohyaConfig",
                  "inputs": {"config_json": config_json, "format": fmt, "output_name": output_name}}}


def test_a_pasted_report_exports_as_sd_scripts_toml(comfy, comfy_server):
    shown = comfy.run(export_prompt(json.dumps(REPORT), "toml", "exported"))["1"]["text"][0]
    assert shown.startswith("saved output/atelier/configs/exported.toml\n")
    path = comfy_server.output_dir / "atelier" / "configs" / "exported.toml"
    parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    assert parsed["network_dim"] == 12 and parsed["network_alpha"] == 6.0
    assert parsed["unet_lr"] == 3e-4 and parsed["text_encoder_lr"] == 5e-5 and parsed["max_train_epochs"] == 6
    assert parsed["lr_scheduler"] == "cosine" and parsed["seed"] == 7 and parsed["network_train_unet_only"] is False
    assert "# not exported (no sd-scripts key): ema_decay = 0.99" in shown
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_json_format_and_bad_inputs(comfy):
    shown = comfy.run(export_prompt(json.dumps(REPORT["config"]), "json"))["1"]["text"][0]
    exported = json.loads(shown[:shown.rindex("}") + 1])
    assert exported["max_train_epochs"] == 6 and exported["network_dim"] == 32  # no network part: our defaults
    assert "no network part" in shown
    for inputs, message in (((json.dumps(REPORT), "yaml"), "Unknown format 'yaml'; expected one of toml, json"),
                            (("", "toml"), "config_json is empty"),
                            ((json.dumps(REPORT), "toml", "../up"), "output_name")):
        with pytest.raises(AssertionError, match=message):
            comfy.run(export_prompt(*inputs))
