"""Re-checks of widget values inside the nodes: ComfyUI 0.3.64 does not check V3 combo values against their options,
so any client can POST a value no dropdown offers ('mode': 'bogus'). Plain Python, no ComfyUI import."""

from __future__ import annotations

from ..core.paths import PathRefused, safe_name

MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; suffixes such as '-000001.safetensors' need the rest


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
        size = len(name.strip().encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:  # before safe_name, whose message would echo the whole name
            raise PathRefused(f"{what} is {size:,} bytes long ('{name[:24]}…'); use a name of at most "
                              f"{MAX_NAME_BYTES} bytes.")
        if name.strip():
            safe_name(name, what)
