"""Atelier: from a raw image folder to a shipped LoRA, inside the ComfyUI graph.

ComfyUI loads this file as a package named after its folder. Importing it must stay cheap and must not
import ComfyUI: the node classes (the only code that touches the host) load when ComfyUI calls
`comfy_entrypoint`, so the pure layers (`core/`, `trainers/`) can be imported and tested without a host.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 registration: ComfyUI awaits this and asks the returned extension for its node list."""
    from .nodes.extension import AtelierExtension

    return AtelierExtension()
