"""kohya_ss GUI JSON and sd-scripts TOML import: the same TrainConfig as the equivalent widgets, nothing dropped."""

import dataclasses
import json
import tomllib

import pytest

from atelier.trainers.kohya_config import (export_kohya, export_text, import_kohya, is_toml, looks_like_kohya,
                                           toml_text)
from atelier.trainers.loop import TrainConfig
from atelier.trainers.network import NetworkConfig

# Shaped like a file saved by the kohya_ss GUI's LoRA tab (numbers saved as text, empty strings for unset).
GUI_JSON = {
    "LoRA_type": "Kohya LoCon", "adaptive_noise_scale": 0, "additional_parameters": "", "bucket_no_upscale": True,
    "cache_latents": True, "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0.05,
    "caption_extension": ".txt", "caption_tag_dropout_rate": 0.1, "clip_skip": "1", "color_aug": False,
    "conv_alpha": 1, "conv_dim": 8, "enable_bucket": True, "epoch": 12, "flip_aug": False,
    "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "keep_tokens": "1", "learning_rate": 0.0001,
    "logging_dir": "/data/log", "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": "3",
    "lr_scheduler_power": "", "lr_warmup": 0, "max_grad_norm": 1, "max_timestep": 900, "max_train_epochs": "",
    "max_train_steps": "", "min_snr_gamma": 5, "min_timestep": 100, "mixed_precision": "bf16", "module_dropout": 0,
    "multires_noise_iterations": 0, "network_alpha": 16, "network_dim": 32, "network_dropout": 0.1,
    "noise_offset": 0.05, "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.05 betas=0.9,0.99",
    "output_dir": "/data/out", "output_name": "my_char", "pretrained_model_name_or_path": "/models/sd15.safetensors",
    "rank_dropout": 0, "resolution": "512,512", "save_every_n_epochs": 2, "save_precision": "fp16", "seed": "1234",
    "shuffle_caption": True, "text_encoder_lr": 5e-05, "train_batch_size": 2, "train_data_dir": "/data/img",
    "unet_lr": 0.0002, "xformers": "xformers",
}
# The settings an artist would type into Train LoRA Advanced's widgets for the same run.
WIDGETS = dict(epochs=12, max_steps=0, batch_size=2, grad_accum=2, unet_lr=2e-4, te_lr=5e-5, train_text_encoder=True,
               train_t5=False, optimizer="adamw", weight_decay=0.05, scheduler="cosine_with_restarts", warmup_steps=0,
               num_cycles=3, power=1.0, loss="l2", huber_delta=0.1, min_snr_gamma=5.0, noise_offset=0.05,
               min_timestep_percent=0.1, max_timestep_percent=0.9, max_grad_norm=1.0, precision="bf16", seed=1234,
               ema_decay=0.0,
               caption_shuffle=True, keep_tokens=1, caption_dropout=0.05, tag_dropout=0.1, masked_loss=False,
               save_every_steps=0, save_every_epochs=2, sample_every_steps=0, sample_every_epochs=0)
NETWORK_WIDGETS = dict(rank=32, alpha=16.0, conv_rank=8, conv_alpha=1.0, dropout=0.1, rank_dropout=0.0,
                       module_dropout=0.0)

# An sd-scripts --config_file: sections, network_args and optimizer_args as lists, unet-only training.
SD_SCRIPTS_TOML = """
[model_arguments]
pretrained_model_name_or_path = "/models/sd15.safetensors"

[additional_network_arguments]
unet_lr = 0.00025
text_encoder_lr = 5e-5
network_dim = 64
network_alpha = 8
network_module = "networks.lora"
network_args = ["conv_dim=4", "conv_alpha=2", "rank_dropout=0.1"]
network_train_unet_only = true

[optimizer_arguments]
learning_rate = 0.00025
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 0.1
optimizer_type = "Lion"
optimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"]

[training_arguments]
max_train_steps = 200
max_train_epochs = 0
save_every_n_steps = 50
save_last_n_epochs = 5
train_batch_size = 4
mixed_precision = "no"
loss_type = "huber"
huber_c = 0.2
seed = 42
max_token_length = 225
"""


def test_gui_json_gives_the_widgets_config():
    train, net, report = import_kohya(json.dumps(GUI_JSON))
    assert TrainConfig.from_dict(train) == TrainConfig.from_dict(WIDGETS)
    assert NetworkConfig(**net) == NetworkConfig(**NETWORK_WIDGETS)
    assert report["mapped"]["epoch"] == "epochs" and report["mapped"]["optimizer_args weight_decay"] == "weight_decay"
    assert report["unknown"] == ["bucket_no_upscale", "logging_dir", "save_precision", "xformers"]
    assert report["no_equivalent"]["output_name"] == "set with the output_name widget"
    assert "optimizer_args betas" in report["no_equivalent"] and "clip_skip" in report["no_equivalent"]
    assert {"adaptive_noise_scale", "max_train_steps", "lr_warmup", "additional_parameters"} <= set(report["off"])
    assert any("AdamW8bit" in note for note in report["notes"])


def test_every_key_lands_in_exactly_one_list():
    _, _, report = import_kohya(json.dumps(GUI_JSON))
    listed = [*report["mapped"], *report["off"], *report["no_equivalent"], *report["unknown"]]
    plain = [key.split(" ")[0] for key in listed]  # "optimizer_args betas" -> optimizer_args
    assert set(plain) >= set(GUI_JSON) - {"optimizer_args"}
    assert len(listed) == len(set(listed))


def test_sd_scripts_toml():
    assert is_toml(SD_SCRIPTS_TOML) and not is_toml('{"epochs": 1}')
    train, net, report = import_kohya(SD_SCRIPTS_TOML)
    expected = TrainConfig.from_dict(dict(
        epochs=TrainConfig.epochs, max_steps=200, batch_size=4, unet_lr=2.5e-4, te_lr=5e-5, train_text_encoder=False,
        optimizer="lion", weight_decay=0.1, scheduler="constant", warmup_steps=20, loss="huber", huber_delta=0.2,
        precision="fp32", seed=42, save_every_steps=50, save_every_epochs=0))
    assert TrainConfig.from_dict(train) == expected
    assert NetworkConfig(**net) == NetworkConfig(rank=64, alpha=8.0, conv_rank=4, conv_alpha=2.0, rank_dropout=0.1)
    assert report["unknown"] == ["max_token_length"]
    assert report["no_equivalent"]["save_last_n_epochs"] == "set with the keep_last widget"
    assert "max_train_epochs" in report["off"]
    assert any("pseudo-Huber" in note for note in report["notes"])


@pytest.mark.parametrize("key, value, message", [
    ("unet_lr", 3.0, "kohya key 'unet_lr': Training setting 'unet_lr' must be between 0.0 and 1.0, got 3.0"),
    ("train_batch_size", 2000, "kohya key 'train_batch_size': Training setting 'batch_size' must be between 1"),
    ("keep_tokens", "three", "kohya key 'keep_tokens' must be a number, got 'three'"),
    ("optimizer", "Prodigy", "kohya key 'optimizer' = 'Prodigy' has no equivalent here; expected one of adafactor"),
    ("lr_scheduler", "piecewise_constant", "kohya key 'lr_scheduler' = 'piecewise_constant' has no equivalent"),
    ("max_timestep", 1200, "kohya key 'max_timestep' must be between 0 and 1000, got 1200"),
    ("network_dropout", 1.5, "kohya key 'network_dropout': NetworkConfig.dropout must be in [0, 1)"),
    ("LoRA_type", "LyCORIS/LoHa", "kohya key 'LoRA_type' = 'LyCORIS/LoHa' is not trained here"),
    ("loss_type", "smooth_l1", "kohya key 'loss_type' = 'smooth_l1' has no equivalent"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError) as e:
        import_kohya(json.dumps({**GUI_JSON, key: value}))
    assert message in str(e.value)


def test_min_timestep_above_max_cannot_train():
    with pytest.raises(ValueError, match="cannot train: min_timestep_percent"):
        import_kohya(json.dumps({**GUI_JSON, "min_timestep": 950}))


def test_text_encoder_lr_zero_trains_the_unet_only():
    train, _, report = import_kohya(json.dumps({"learning_rate": 1e-4, "text_encoder_lr": 0, "epoch": 3}))
    config = TrainConfig.from_dict(train)
    assert not config.train_text_encoder and config.unet_lr == 1e-4 and config.te_lr == 1e-4
    assert report["mapped"]["learning_rate"] == ["unet_lr", "te_lr"]


def test_train_t5xxl_maps_to_train_t5_both_ways():
    train, _, report = import_kohya(json.dumps({"learning_rate": 1e-4, "train_t5xxl": True, "epoch": 3}))
    config = TrainConfig.from_dict(train)
    assert config.train_t5 and config.train_text_encoder and report["mapped"]["train_t5xxl"] == "train_t5"
    assert export_kohya(config, NetworkConfig())["train_t5xxl"] is True
    assert TrainConfig.from_dict(import_kohya(json.dumps(export_kohya(config, NetworkConfig())))[0]) == config
    # the T5 trains with the text encoders: with network_train_unet_only the import says it cannot train
    with pytest.raises(ValueError, match="cannot train: train_t5 trains the T5-XXL together with the CLIP text "
                                         "encoders, but train_text_encoder is off; turn train_text_encoder on, or "
                                         "train_t5 off."):
        import_kohya(json.dumps({"learning_rate": 1e-4, "train_t5xxl": True, "network_train_unet_only": True}))


def test_export_then_import_round_trips():
    config = TrainConfig.from_dict({**WIDGETS, "loss": "huber", "huber_delta": 0.3, "optimizer": "sgd",
                                    "train_text_encoder": False, "save_every_steps": 10, "max_grad_norm": 0.0})
    network = NetworkConfig(**NETWORK_WIDGETS)
    exported = export_kohya(config, network)
    assert exported["network_dim"] == 32 and exported["optimizer_type"] == "SGDNesterov"
    assert exported["max_train_epochs"] == 12 and exported["network_train_unet_only"] is True
    train, net, report = import_kohya(json.dumps(exported))
    assert TrainConfig.from_dict(train) == config and NetworkConfig(**net) == network
    assert report["unknown"] == [] and report["no_equivalent"] == {}
    # TOML too: what sd-scripts reads from --config_file
    toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in exported.items())
    assert TrainConfig.from_dict(import_kohya(toml)[0]) == config


def test_detection_leaves_our_own_configs_alone():
    ours = TrainConfig().to_dict()
    assert not looks_like_kohya(ours) and not looks_like_kohya({"seed": 3, "unet_lr": 1e-4})
    assert looks_like_kohya({"learning_rate": 1e-4}) and looks_like_kohya({"network_dim": 8})
    assert set(WIDGETS) == {f.name for f in dataclasses.fields(TrainConfig)}  # the widget set is complete


def test_toml_writer_reads_back_with_tomllib():
    data = {"s": 'quote " back\\slash\nnew line é', "i": -3, "f": 1e-05, "g": 0.1, "big": 1e20, "t": True,
            "n": False, "l": ["weight_decay=0.01", "betas=0.9,0.99"], "empty": [], "odd key": 1}
    text = toml_text(data, ["a comment", "not exported: ema_decay = 0.999"])
    assert text.startswith("# a comment\n# not exported: ema_decay = 0.999\n")
    assert tomllib.loads(text) == data


@pytest.mark.parametrize("value, message", [(float("nan"), "finite numbers only"), (float("inf"), "finite"),
                                            ({"a": 1}, "cannot be written to TOML"), ([1, 2], "list of texts")])
def test_toml_writer_refuses_what_it_cannot_express(value, message):
    with pytest.raises(ValueError, match=message):
        toml_text({"key": value})


def test_exported_toml_imports_to_the_same_config():
    config = TrainConfig.from_dict({**WIDGETS, "ema_decay": 0.999, "optimizer": "lion", "warmup_steps": 20,
                                    "scheduler": "polynomial", "power": 2.0})
    network = NetworkConfig(**NETWORK_WIDGETS, target_patterns=("attn2",))
    text = export_text(config, network, "toml")
    parsed = tomllib.loads(text)  # what sd-scripts' read_config_from_file does with --config_file
    assert parsed["network_dim"] == 32 and parsed["unet_lr"] == 2e-4 and parsed["max_train_epochs"] == 12
    assert parsed["optimizer_args"] == ["weight_decay=0.05"] and parsed["mixed_precision"] == "bf16"
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "# not exported (no sd-scripts key): ema_decay = 0.999" in header
    assert "# not exported (no sd-scripts key): target_patterns = ['attn2']" in header
    train, net, report = import_kohya(text)
    back = TrainConfig.from_dict(train)
    # every field with a kohya key comes back; ema_decay has none and returns to its default
    assert back == dataclasses.replace(config, ema_decay=TrainConfig.ema_decay)
    assert NetworkConfig(**net) == dataclasses.replace(network, target_patterns=())
    assert report["unknown"] == [] and report["no_equivalent"] == {}
    assert json.loads(export_text(config, network, "json")) == parsed


def test_export_by_steps_writes_steps_only_and_says_so():
    config = TrainConfig.from_dict({**WIDGETS, "max_steps": 300})
    text = export_text(config, NetworkConfig(), "toml")
    parsed = tomllib.loads(text)
    assert parsed["max_train_steps"] == 300 and "max_train_epochs" not in parsed
    assert "# not exported (no sd-scripts key): epochs = 12 (max_steps 300 ends the run)" in text
    assert TrainConfig.from_dict(import_kohya(text)[0]).max_steps == 300
    with pytest.raises(ValueError, match="Unknown format 'yaml'; expected one of toml, json"):
        export_text(config, NetworkConfig(), "yaml")


def test_toml_strings_outside_the_basic_plane_stay_valid_toml():
    import tomllib

    from atelier.trainers.kohya_config import toml_text

    data = {"output_name": "elf \U0001F600 \u00e9", "tags": ["\U0001F31F star"]}
    assert tomllib.loads(toml_text(data)) == data  # no \ud83d-style surrogate escapes, which TOML refuses
