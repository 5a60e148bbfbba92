"""Reads a kohya_ss GUI JSON or an sd-scripts TOML (`--config_file`) into our settings, and writes ours back.

Nothing here knows ComfyUI. Key names follow sd-scripts (library/train_util.py, train_network.py) and the kohya_ss
GUI's saved JSON (`epoch`, `optimizer`, `conv_dim`, `lr_warmup` percent, numbers sometimes saved as text). Every key
of the input lands in exactly one list of the report: mapped, off (set to nothing / zero, so it changes nothing),
no_equivalent (a setting we do not have, or one set elsewhere in the graph) or unknown. A value we cannot honour is
refused with a message naming the kohya key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib

from .loop import TrainConfig
from .network import NetworkConfig

# kohya key -> our TrainConfig field, for values that carry over unchanged.
TRAIN_KEYS = {
    "train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_num_cycles": "num_cycles", "lr_scheduler_power": "power", "min_snr_gamma": "min_snr_gamma",
    "noise_offset": "noise_offset", "max_grad_norm": "max_grad_norm", "seed": "seed", "shuffle_caption":
    "caption_shuffle", "keep_tokens": "keep_tokens", "caption_dropout_rate": "caption_dropout",
    "caption_tag_dropout_rate": "tag_dropout", "save_every_n_epochs": "save_every_epochs", "train_t5xxl": "train_t5",
    "save_every_n_steps": "save_every_steps", "sample_every_n_steps": "sample_every_steps",
    "sample_every_n_epochs": "sample_every_epochs", "huber_c": "huber_delta", "masked_loss": "masked_loss",
}
# kohya key -> our NetworkConfig field (kohya_ss GUI top-level keys; sd-scripts puts the last five in network_args).
NETWORK_KEYS = {"network_dim": "rank", "network_alpha": "alpha", "conv_dim": "conv_rank", "conv_alpha": "conv_alpha",
                "network_dropout": "dropout", "rank_dropout": "rank_dropout", "module_dropout": "module_dropout"}
# Keys whose meaning needs a conversion (handled one by one below).
SPECIAL_KEYS = ("learning_rate", "unet_lr", "text_encoder_lr", "max_train_epochs", "epoch", "max_train_steps",
                "optimizer", "optimizer_type", "optimizer_args", "lr_scheduler", "lr_warmup_steps", "lr_warmup",
                "mixed_precision", "min_timestep", "max_timestep", "loss_type", "network_train_unet_only",
                "network_train_text_encoder_only", "network_args", "network_module", "LoRA_type")
# Known kohya keys set elsewhere in the graph: where to set them instead.
ELSEWHERE = {
    "pretrained_model_name_or_path": "the checkpoint loader", "train_data_dir": "the dataset nodes",
    "reg_data_dir": "the dataset nodes", "resolution": "the dataset nodes", "enable_bucket": "the dataset nodes",
    "flip_aug": "the dataset nodes (random_flip)", "caption_extension": "the dataset nodes",
    "output_name": "the output_name widget", "output_dir": "models/loras/atelier (fixed)",
    "gradient_checkpointing": "the gradient_checkpointing widget", "cache_latents": "the cache_latents widget",
    "blocks_to_swap": "the blocks_to_swap widget (Train LoRA Advanced)",
    "cache_latents_to_disk": "the cache_latents widget", "save_last_n_epochs": "the keep_last widget",
    "save_last_n_steps": "the keep_last widget", "sample_prompts": "the sample_prompts widget",
    "sample_sampler": "the sample_sampler widget", "network_weights": "the continue_from widget",
    "lora_network_weights": "the continue_from widget", "resume": "the resume_state widget",
    "clip_skip": "a CLIPSetLastLayer node before training", "vae": "the VAE input",
}
OPTIMIZER_NAMES = {"adamw": "adamw", "adamw8bit": "adamw", "pagedadamw": "adamw", "pagedadamw8bit": "adamw",
                   "pagedadamw32bit": "adamw", "lion": "lion", "lion8bit": "lion", "pagedlion8bit": "lion",
                   "adafactor": "adafactor", "sgdnesterov": "sgd", "sgdnesterov8bit": "sgd"}
SCHEDULER_NAMES = {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine",
                   "cosine_with_restarts": "cosine_with_restarts", "polynomial": "polynomial", "adafactor": "constant"}
PRECISION_NAMES = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
LOSS_NAMES = {"l2": "l2", "l1": "l1", "huber": "huber"}
NETWORK_MODULES = ("networks.lora",)
ZERO_MEANS = ("max_grad_norm",)  # keys whose 0 is a setting (no clipping), not "unset"
LORA_TYPES = ("Standard", "Kohya LoCon", "LoCon", "LyCORIS/LoCon")


def looks_like_kohya(data: dict) -> bool:
    """True when a JSON object uses a kohya key that is not also one of our TrainConfig field names."""
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    kohya = set(TRAIN_KEYS) | set(NETWORK_KEYS) | set(SPECIAL_KEYS) | set(ELSEWHERE)
    return any(key in kohya and key not in ours for key in data)


def is_toml(text: str) -> bool:
    """True when the text is a non-empty TOML document (an sd-scripts --config_file)."""
    try:
        return bool(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return False


def parse_kohya(text: str) -> dict:
    """The settings of a kohya_ss GUI JSON or sd-scripts TOML as one flat dict (TOML tables are flattened)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"The config is neither JSON nor TOML ({e}); paste a kohya_ss GUI .json or an "
                             "sd-scripts --config_file .toml.") from None
    if not isinstance(data, dict):
        raise ValueError(f"A kohya config must be an object of settings, got {type(data).__name__}.")
    flat = {}
    for key, value in data.items():
        # sd-scripts' read_config_from_file merges its sections ([training_arguments], ...) into one namespace.
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def import_kohya(text: str) -> tuple[dict, dict, dict]:
    """(TrainConfig dict, NetworkConfig overrides, report) from a kohya_ss GUI JSON or sd-scripts TOML."""
    return import_kohya_dict(parse_kohya(text))


def import_kohya_dict(data: dict) -> tuple[dict, dict, dict]:
    """(TrainConfig dict, NetworkConfig overrides, report) from flat kohya settings; see import_kohya."""
    report = {"mapped": {}, "off": [], "no_equivalent": {}, "unknown": [], "notes": []}
    data = dict(data)
    _expand_args(data, "network_args", report)
    opt_args = _expand_args(data, "optimizer_args", report)
    # sd-scripts' defaults where they differ from ours: the text encoder trains unless network_train_unet_only,
    # and only the last file is saved unless save_every_n_epochs is given.
    train = {"train_text_encoder": True, "save_every_epochs": 0}
    net = {}
    for key, value in data.items():
        if key in SPECIAL_KEYS:
            continue  # converted below, together with the keys they depend on
        if _is_off(value) and not (key in ZERO_MEANS and value == 0):
            report["off"].append(key)
        elif key in TRAIN_KEYS:
            train[TRAIN_KEYS[key]] = _number_like(key, value, getattr(TrainConfig, TRAIN_KEYS[key]))
            report["mapped"][key] = TRAIN_KEYS[key]
        elif key in ("conv_dim", "conv_alpha") and data.get("LoRA_type") == "Standard":
            report["no_equivalent"][key] = "kohya_ss does not use it for LoRA_type Standard (no LoCon)"
        elif key in NETWORK_KEYS:
            net[NETWORK_KEYS[key]] = _number_like(key, value, getattr(NetworkConfig, NETWORK_KEYS[key]))
            report["mapped"][key] = NETWORK_KEYS[key]
        elif key in ELSEWHERE:
            report["no_equivalent"][key] = f"set with {ELSEWHERE[key]}"
        else:
            report["unknown"].append(key)
    _learning_rates(data, train, report)
    _length(data, train, report)
    _choices(data, train, report)
    _warmup(data, train, report)
    _timesteps(data, train, report)
    _network_kind(data, report)
    if "weight_decay" in opt_args:
        train["weight_decay"] = _number_like("optimizer_args weight_decay", opt_args.pop("weight_decay"), 0.0)
        report["mapped"]["optimizer_args weight_decay"] = "weight_decay"
    for name in opt_args:
        report["no_equivalent"][f"optimizer_args {name}"] = "our optimizers use their standard arguments"
    for key in SPECIAL_KEYS:  # every special key present lands in one list
        if key in data and key not in report["mapped"] and key not in report["no_equivalent"]:
            report["off"].append(key)
    _check(train, net)
    report["off"] = sorted(set(report["off"]))
    report["unknown"].sort()
    return train, net, report


def _is_off(value) -> bool:
    """A GUI value that sets nothing: empty text, null, false, 0."""
    return value is None or value == "" or value is False or (not isinstance(value, bool) and value == 0)


def _number_like(key: str, value, default):
    """The value as the type of our default: the kohya_ss GUI saves some numbers as text ("keep_tokens": "0")."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"kohya key '{key}' must be true or false, got {value!r}.")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"kohya key '{key}' must be a number, got {value!r}; fix or remove it.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"kohya key '{key}' must be a finite number, got {value!r}; fix or remove it.")
    if isinstance(default, int):
        if value != int(value):
            raise ValueError(f"kohya key '{key}' must be a whole number, got {value!r}.")
        return int(value)
    return float(value)


def _expand_args(data: dict, key: str, report: dict) -> dict:
    """'name=value' entries of network_args / optimizer_args (a TOML list or the GUI's space-separated text)."""
    raw = data.pop(key, None)
    if _is_off(raw) or raw == []:
        if raw is not None:
            report["off"].append(key)
        return {}
    entries = raw.split() if isinstance(raw, str) else raw
    if not isinstance(entries, list) or not all(isinstance(e, str) and "=" in e for e in entries):
        raise ValueError(f"kohya key '{key}' must be a list of 'name=value' texts, got {raw!r}.")
    args = dict(e.split("=", 1) for e in entries)
    if key == "network_args":  # conv_dim, dropouts, algo: merged into the top-level keys as the GUI writes them
        for name, value in args.items():
            if name in NETWORK_KEYS or name == "algo":
                data.setdefault(name if name != "algo" else "LoRA_type", value)
            else:
                report["no_equivalent"][f"network_args {name}"] = "no such network option here"
        return {}
    return args


def _learning_rates(data: dict, train: dict, report: dict) -> None:
    """unet_lr and text_encoder_lr default to learning_rate, as in sd-scripts; text_encoder_lr 0 = UNet only."""
    base = data.get("learning_rate")
    for key, ours in (("unet_lr", "unet_lr"), ("text_encoder_lr", "te_lr")):
        value = data.get(key)
        if not _is_off(value):
            train[ours] = _number_like(key, value, 0.0)
            report["mapped"][key] = ours
        elif not _is_off(base):
            train[ours] = _number_like("learning_rate", base, 0.0)
            report["mapped"].setdefault("learning_rate", []).append(ours)
    if not _is_off(base) and "learning_rate" not in report["mapped"]:
        report["no_equivalent"]["learning_rate"] = "unet_lr and text_encoder_lr are both given and win"
    te_lr = data.get("text_encoder_lr")
    if not isinstance(te_lr, (bool, str)) and te_lr == 0:  # sd-scripts: an explicit 0 trains the UNet only
        train["train_text_encoder"] = False
        report["mapped"]["text_encoder_lr"] = "train_text_encoder"
        report["notes"].append("text_encoder_lr 0: the text encoder is not trained (train_text_encoder false).")
    if not _is_off(data.get("network_train_unet_only")):
        train["train_text_encoder"] = not _number_like("network_train_unet_only", data["network_train_unet_only"],
                                                       False)
        report["mapped"]["network_train_unet_only"] = "train_text_encoder"
    only_te = data.get("network_train_text_encoder_only")
    if not _is_off(only_te) and _number_like("network_train_text_encoder_only", only_te, False):
        raise ValueError("kohya key 'network_train_text_encoder_only' is true, but training only the text encoder "
                         "is not supported here; set it to false or remove it.")


def _length(data: dict, train: dict, report: dict) -> None:
    """max_train_epochs (GUI: epoch) wins over max_train_steps, as in sd-scripts."""
    epochs_key = next((k for k in ("max_train_epochs", "epoch") if not _is_off(data.get(k))), None)
    if epochs_key:
        train["epochs"], train["max_steps"] = _number_like(epochs_key, data[epochs_key], 0), 0
        report["mapped"][epochs_key] = "epochs"
        for other in ("max_train_epochs", "epoch", "max_train_steps"):
            if other != epochs_key and not _is_off(data.get(other)):
                report["no_equivalent"][other] = f"{epochs_key} wins, as in sd-scripts"
    elif not _is_off(data.get("max_train_steps")):
        train["max_steps"] = _number_like("max_train_steps", data["max_train_steps"], 0)
        report["mapped"]["max_train_steps"] = "max_steps"


def _choice(key: str, value, names: dict) -> str:
    if not isinstance(value, str) or value.strip().lower() not in names:
        allowed = ", ".join(sorted(names))
        raise ValueError(f"kohya key '{key}' = {value!r} has no equivalent here; expected one of {allowed} "
                         "(any case). Change it or remove the key.")
    return names[value.strip().lower()]


def _choices(data: dict, train: dict, report: dict) -> None:
    """optimizer / optimizer_type, lr_scheduler, mixed_precision and loss_type, spelled our way."""
    for key, ours, names in (("optimizer_type", "optimizer", OPTIMIZER_NAMES),
                             ("optimizer", "optimizer", OPTIMIZER_NAMES),
                             ("lr_scheduler", "scheduler", SCHEDULER_NAMES),
                             ("mixed_precision", "precision", PRECISION_NAMES),
                             ("loss_type", "loss", LOSS_NAMES)):
        if _is_off(data.get(key)):
            continue
        train[ours] = _choice(key, data[key], names)
        report["mapped"][key] = ours
        spelled = data[key].strip().lower()
        if spelled != train[ours]:
            report["notes"].append(f"{key} '{data[key]}' trains as '{train[ours]}' here"
                                   + (" (8-bit and paged variants only save memory)." if "8bit" in spelled
                                      or "paged" in spelled else "."))
    if train.get("loss") == "huber":
        report["notes"].append("loss_type huber: sd-scripts uses pseudo-Huber with huber_c (and huber_schedule); "
                               "here it is Huber with huber_delta = huber_c at every timestep.")


def _warmup(data: dict, train: dict, report: dict) -> None:
    """lr_warmup_steps (a count, or below 1 a fraction of the run) or the GUI's lr_warmup percent."""
    for key, scale in (("lr_warmup_steps", 1.0), ("lr_warmup", 100.0)):
        if _is_off(data.get(key)):
            continue
        value = _number_like(key, data[key], 0.0)
        fraction = value / scale if scale != 1.0 or value < 1 else None
        if fraction is None:
            steps = _number_like(key, value, 0)
        elif train.get("max_steps", 0) > 0:
            steps = round(fraction * train["max_steps"])
        else:  # training by epochs: the step count depends on the dataset, unknown here
            report["no_equivalent"][key] = (f"a share ({fraction:g}) of a run counted in epochs; set warmup_steps "
                                            "as a count")
            continue
        train["warmup_steps"] = steps
        report["mapped"][key] = "warmup_steps"


def _timesteps(data: dict, train: dict, report: dict) -> None:
    """min_timestep / max_timestep (0..1000) become our fractions of the noise schedule."""
    for key, ours in (("min_timestep", "min_timestep_percent"), ("max_timestep", "max_timestep_percent")):
        if _is_off(data.get(key)):
            continue
        value = _number_like(key, data[key], 0)
        if not 0 <= value <= 1000:
            raise ValueError(f"kohya key '{key}' must be between 0 and 1000, got {value}.")
        train[ours] = value / 1000
        report["mapped"][key] = ours


def _network_kind(data: dict, report: dict) -> None:
    """Refuses a network other than LoRA / LoCon: its file would be a different thing."""
    for key, allowed in (("network_module", NETWORK_MODULES), ("LoRA_type", LORA_TYPES)):
        value = data.get(key)
        if _is_off(value):
            continue
        if value not in allowed and str(value).lower() not in ("lora", "locon"):
            raise ValueError(f"kohya key '{key}' = {value!r} is not trained here; expected one of "
                             f"{', '.join(allowed)} (LoRA, or LoCon with conv_dim). Change it or remove the key.")
        report["mapped"][key] = "LoRA / LoCon"


def _check(train: dict, net: dict) -> None:
    """Each value through our own checks, the message naming the kohya key it came from."""
    back = {ours: kohya for kohya, ours in {**TRAIN_KEYS, **NETWORK_KEYS}.items()}
    back.update(unet_lr="unet_lr", te_lr="text_encoder_lr", epochs="max_train_epochs", max_steps="max_train_steps",
                warmup_steps="lr_warmup_steps", weight_decay="optimizer_args weight_decay",
                min_timestep_percent="min_timestep", max_timestep_percent="max_timestep")
    for name, value in train.items():
        try:
            TrainConfig.from_dict({name: value})
        except ValueError as e:
            raise ValueError(f"kohya key '{back.get(name, name)}': {e}") from None
    for name, value in net.items():
        try:
            NetworkConfig(**{name: value})
        except ValueError as e:
            raise ValueError(f"kohya key '{back.get(name, name)}': {e}") from None
    try:
        TrainConfig.from_dict(train).validate()
    except ValueError as e:
        raise ValueError(f"The imported kohya config cannot train: {e}") from None


def export_kohya(config: TrainConfig, network: NetworkConfig) -> dict:
    """Our settings under the sd-scripts keys that exist (unet_lr, network_dim, optimizer_type, ...)."""
    out = {kohya: getattr(config, ours) for kohya, ours in TRAIN_KEYS.items()}
    out.update({kohya: getattr(network, ours) for kohya, ours in NETWORK_KEYS.items()})
    out.update(unet_lr=config.unet_lr, text_encoder_lr=config.te_lr,
               network_train_unet_only=not config.train_text_encoder, optimizer_type=config.optimizer,
               optimizer_args=[f"weight_decay={config.weight_decay}"], lr_scheduler=config.scheduler,
               lr_warmup_steps=config.warmup_steps, mixed_precision="no" if config.precision == "fp32"
               else config.precision, loss_type=config.loss, min_timestep=round(config.min_timestep_percent * 1000),
               max_timestep=round(config.max_timestep_percent * 1000))
    if config.max_steps > 0:
        out["max_train_steps"] = config.max_steps
    else:
        out["max_train_epochs"] = config.epochs
    if config.optimizer == "sgd":
        out["optimizer_type"] = "SGDNesterov"
    return out


EXPORT_FORMATS = ("toml", "json")
# Our settings that round-trip through export_kohya (kohya has a key for each); every other field is listed as
# not exported.
EXPORTED_FIELDS = {*TRAIN_KEYS.values(), *NETWORK_KEYS.values(), "unet_lr", "te_lr", "train_text_encoder", "optimizer",
                   "weight_decay", "scheduler", "warmup_steps", "precision", "loss", "min_timestep_percent",
                   "max_timestep_percent", "max_steps", "epochs"}


def not_exported(config: TrainConfig, network: NetworkConfig) -> dict:
    """Our settings export_kohya cannot express (no sd-scripts key), with their values."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in EXPORTED_FIELDS}
    if config.max_steps > 0:  # sd-scripts: max_train_epochs would win over max_train_steps, so only steps are written
        out["epochs"] = f"{config.epochs} (max_steps {config.max_steps} ends the run)"
    for name in ("target_patterns", "exclude_patterns", "rank_overrides"):
        if getattr(network, name):
            out[name] = list(getattr(network, name))
    return out


def toml_text(data: dict, comments: list[str] = ()) -> str:
    """A flat TOML document (str, int, float, bool, list of str values), as sd-scripts' --config_file reads it."""
    lines = [f"# {c}" for c in comments]
    for key, value in data.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)  # a JSON string is a TOML basic string


def _toml_value(key: str, value) -> str:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"'{key}' is {value}; a config file holds finite numbers only.")
        return repr(value)  # '0.0001', '1e-05', '1.0': all TOML floats
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # \ud83d-style surrogate escapes are not TOML
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
    raise ValueError(f"'{key}' = {value!r} cannot be written to TOML here; expected text, a number, true/false or a "
                     "list of texts.")


def export_text(config: TrainConfig, network: NetworkConfig, fmt: str, notes: list[str] = ()) -> str:
    """export_kohya as an sd-scripts TOML (what it cannot express listed in a comment at the top) or a kohya JSON."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown format '{fmt}'; expected one of {', '.join(EXPORT_FORMATS)}.")
    data = export_kohya(config, network)
    if fmt == "json":
        return json.dumps(data, indent=1)
    missing = not_exported(config, network)
    comments = ["sd-scripts training settings exported by Atelier (train_network.py --config_file).", *notes]
    comments += [f"not exported (no sd-scripts key): {name} = {value}" for name, value in missing.items()]
    return toml_text(data, comments)
