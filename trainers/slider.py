"""Text-slider prompt sets (LECO / Concept Sliders `prompts.yaml`) and the image-free samples the loop trains on.
Nothing here knows ComfyUI.

A prompt set names a direction: `positive` minus `unconditional` (the "negative" concept), applied to what the model
makes of `target`, anchored at `neutral`. Field names and defaults follow LECO's PromptSettings (also used by the
Concept Sliders scripts), so their prompts.yaml files read unchanged. The YAML reader accepts only the subset those
files use (a list of flat `key: value` mappings), so no YAML library is needed; JSON is accepted too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import torch

from .loop import TrainSample
from .objectives import SLIDER_ACTIONS

RESOLUTION_RANGE = (64, 4096)
GUIDANCE_RANGE = (-100.0, 100.0)
MAX_SETS = 64  # LECO / sliders files hold a handful; more is a pasted mistake and multiplies every epoch
MAX_SET_PIXELS = 4096 * 4096  # resolution² × batch_size of one set: one 4096² latent, or 16 at 1024²


@dataclass(frozen=True)
class SliderPrompts:
    """One prompt set (LECO PromptSettings): what to train on, the direction positive − unconditional, the anchor."""

    target: str
    positive: str | None = None  # None = target
    unconditional: str = ""  # the opposite concept ("negative" in the node)
    neutral: str | None = None  # None = unconditional
    action: str = "erase"
    guidance_scale: float = 1.0
    resolution: int = 512
    batch_size: int = 1  # LECO: latents per set per step; here, repeats of the set per epoch

    def __post_init__(self):
        object.__setattr__(self, "positive", self.target if self.positive is None else self.positive)
        object.__setattr__(self, "neutral", self.unconditional if self.neutral is None else self.neutral)

    def validate(self, where: str = "prompt set") -> None:
        """Refuses a set that cannot train, naming the field and what to do."""
        for name in ("target", "positive", "unconditional", "neutral", "action"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: '{name}' must be text, got {type(getattr(self, name)).__name__}.")
        if not self.target.strip():
            raise ValueError(f"{where}: 'target' is empty; write the prompt the slider acts on, e.g. 'a photo of a "
                             "person'.")
        if self.positive.strip() == self.unconditional.strip():
            raise ValueError(f"{where}: 'positive' and 'negative' (unconditional) are the same ({self.positive!r}), so "
                             "there is no direction to learn; make them opposite concepts, e.g. 'smiling' / "
                             "'frowning'.")
        if self.action not in SLIDER_ACTIONS:
            raise ValueError(f"{where}: 'action' must be one of {', '.join(SLIDER_ACTIONS)}, got {self.action!r}.")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ValueError(f"{where}: 'guidance_scale' must be a finite number, got {g!r}; the sliders use 4.")
        if not GUIDANCE_RANGE[0] <= g <= GUIDANCE_RANGE[1]:
            raise ValueError(f"{where}: 'guidance_scale' must be between {GUIDANCE_RANGE[0]} and {GUIDANCE_RANGE[1]}, "
                             f"got {g}.")
        for name, low, high in (("resolution", *RESOLUTION_RANGE), ("batch_size", 1, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{where}: '{name}' must be an integer between {low} and {high}, got {value!r}.")
        if self.resolution % 8:
            raise ValueError(f"{where}: 'resolution' must be a multiple of 8, got {self.resolution}.")
        if self.resolution ** 2 * self.batch_size > MAX_SET_PIXELS:
            raise ValueError(f"{where}: resolution² × batch_size is {self.resolution}² × {self.batch_size} = "
                             f"{self.resolution ** 2 * self.batch_size:,} pixels, above the {MAX_SET_PIXELS:,} one set "
                             "may take; lower 'resolution' or 'batch_size'.")

    def record(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(SliderPrompts))


def prompt_sets(items: list, source: str = "prompts_yaml") -> list[SliderPrompts]:
    """Validated SliderPrompts from a list of mappings; unknown keys are listed and refused."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"{source} must be a non-empty list of prompt sets, got {_kind(items)}.")
    if len(items) > MAX_SETS:
        raise ValueError(f"{source} holds {len(items)} prompt sets; at most {MAX_SETS} are accepted. Split the "
                         "sliders into separate runs, or remove sets.")
    out = []
    for n, item in enumerate(items, 1):
        where = f"{source}, set {n}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a mapping of {', '.join(FIELDS)}, got {_kind(item)}.")
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(FIELDS)}.")
        if "target" not in item:
            raise ValueError(f"{where}: 'target' is missing; every set needs the prompt it acts on.")
        s = SliderPrompts(**item)
        s.validate(where)
        out.append(s)
    return out


def _kind(value) -> str:
    return f"{type(value).__name__} ({json.dumps(value, default=str)[:60]})"


def parse_prompts(text: str, source: str = "prompts_yaml") -> list[SliderPrompts]:
    """Prompt sets from a LECO / sliders prompts.yaml (the flat-list subset) or the same as JSON."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{source} is empty; paste a prompts.yaml (a list of 'target: ...' sets) or JSON.")
    if text.lstrip()[:1] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} looks like JSON but is not valid ({e.msg} at line {e.lineno}, column "
                             f"{e.colno}).") from None
        return prompt_sets(data if isinstance(data, list) else [data], source)
    return prompt_sets(parse_flat_yaml(text, source), source)


_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(?:\s+(.*))?$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_flat_yaml(text: str, source: str = "prompts_yaml") -> list[dict]:
    """The YAML subset of prompts.yaml files: `- key: value` starts a mapping, indented `key: value` lines continue
    it; values are plain or quoted scalars; comments and blank lines are ignored. Anything else is refused."""
    items: list[dict] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        body = line.lstrip()
        starts = body.startswith("- ")
        if starts:
            body = body[2:].lstrip()
            items.append({})
        elif not items or raw[:1] not in (" ", "\t"):
            raise ValueError(f"{source}, line {number}: expected '- key: value' (a list of flat mappings, as in LECO's "
                             f"prompts.yaml), got {raw.strip()[:60]!r}. Paste JSON for anything else.")
        match = _KEY_VALUE.match(body)
        if not match:
            raise ValueError(f"{source}, line {number}: expected 'key: value', got {body[:60]!r}; nested lists and "
                             "mappings are not part of a prompts.yaml.")
        key, value = match.group(1), match.group(2)
        if key in items[-1]:
            raise ValueError(f"{source}, line {number}: '{key}' appears twice in the same set.")
        items[-1][key] = _scalar(value or "", source, number)
    return items


def _strip_comment(line: str) -> str:
    """The line without a '#' comment outside quotes; only a quote that starts a value opens quoted text (the
    apostrophe in `a person's face` does not)."""
    quote, i = None, 0
    while i < len(line):
        ch = line[i]
        if quote == '"' and ch == "\\":
            i += 1  # an escaped character, e.g. \" inside double quotes
        elif quote:
            if ch == quote and quote == "'" and line[i + 1:i + 2] == "'":
                i += 1  # '' is a quote inside single-quoted text
            elif ch == quote:
                quote = None
        elif ch in "'\"" and re.search(r"(^|:|^\s*-)\s*$", line[:i]):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
        i += 1
    return line


def _scalar(value: str, source: str, number: int):
    """A YAML plain or quoted scalar: text, integer, number, true/false, null (None)."""
    value = value.strip()
    if value and value[0] in "'\"":
        if len(value) < 2 or value[-1] != value[0]:
            raise ValueError(f"{source}, line {number}: unterminated quoted text {value[:60]!r}.")
        inner = value[1:-1]
        if value[0] == "'" or "\\" not in inner:
            return inner.replace("''", "'") if value[0] == "'" else inner
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}, line {number}: the double-quoted text {value[:60]!r} has a bad escape "
                             f"({e.msg}); write \\\\ for a backslash, or use single quotes.") from None
    if value and value[0] in "[{|>&*!":
        raise ValueError(f"{source}, line {number}: {value[:30]!r} is a YAML feature prompts.yaml files do not use; "
                         "write plain or quoted text.")
    if value in ("", "null", "~"):
        return None if value else ""
    if value in ("true", "false"):
        return value == "true"
    if _NUMBER.match(value):
        return int(value) if re.fullmatch(r"[-+]?\d+", value) else float(value)
    return value


def prompt_samples(sets: list[SliderPrompts], latent_channels: int, downscale: int = 8) -> list[TrainSample]:
    """One image-free TrainSample per set: a zero latent for its shape (C, res/8, res/8), the target as caption, the
    set's index as key, its batch_size as repeats."""
    return [TrainSample(latent=torch.zeros(latent_channels, s.resolution // downscale, s.resolution // downscale),
                        caption=s.target, key=i, repeats=s.batch_size) for i, s in enumerate(sets)]


def objective_record(sets: list[SliderPrompts], denoise_steps: int, cfg: float, bidirectional: bool) -> dict:
    """The `atelier_objective` metadata: the method, every prompt set and the objective's settings."""
    return {"method": "text_slider", "sets": [s.record() for s in sets], "denoise_steps": denoise_steps, "cfg": cfg,
            "bidirectional": bidirectional,
            "follows": "Gandikota et al. 2023, Concept Sliders (arXiv:2311.12092) / p1atdev LECO"}
