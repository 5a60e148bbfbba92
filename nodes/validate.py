"""Re-checks of widget values inside the nodes: ComfyUI 0.3.64 does not check V3 combo values against their options,
so any client can POST a value no dropdown offers ('mode': 'bogus'). Plain Python, no ComfyUI import."""

from __future__ import annotations

from ..core.paths import NONE, safe_name

__all__ = ["NONE", "check_choice", "check_names", "check_number"]  # NONE lives in core.paths


def check_choice(value, options, what: str):
    """`value` when it is one of `options`; otherwise a ValueError naming the widget and listing the allowed values."""
    allowed = list(options)
    if isinstance(value, str) and value in allowed:
        return value
    shown = value if isinstance(value, str) else repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ValueError(f"Unknown {what} '{shown}'; expected one of {', '.join(map(str, allowed))}.")


def check_names(**names: str) -> None:
    """Every typed name (subset_name, report_name, set_name...) through safe_name before any work starts; empty
    values mean "use the default" and pass."""
    for what, name in names.items():
        if not isinstance(name, str):
            raise ValueError(f"{what} must be text, got {type(name).__name__}.")
        if name.strip():  # safe_name refuses long names without echoing them
            safe_name(name, what)


def check_number(name: str, value, low: float, high: float) -> float:
    """`value` when it is a finite number in [low, high]; ComfyUI's range check lets NaN through (NaN < min is
    false), so nodes whose numbers reach a merge, a sampler or a file check them again."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:  # also false for NaN
        raise ValueError(f"{name} is {value!r}; expected a finite number from {low:g} to {high:g}.")
    return number
