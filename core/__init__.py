"""Pure logic of Atelier: torch / numpy / PIL only. Nothing here knows ComfyUI.

Every module in this package must be importable and testable on a machine with no ComfyUI checkout; a test
parses these files and fails on any import of a host module.
"""

__version__ = "0.1.0"
