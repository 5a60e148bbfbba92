"""ComfyUI nodes of Atelier: thin wiring between ComfyUI objects and the pure `core/` and `trainers/` code.

This package is the only place that imports comfy, comfy_api, folder_paths, server or node_helpers.
"""

from .compat import ComfyExtension, io

from . import captioning, compare, copy_machine, dataset, grids, kohya_export, leakage, lora_tools, sliders, training
from .host import register_folder_types, register_tagger_folder
from .info import AtelierVersion
from .live import register_routes
from .messages import guard_messages

register_folder_types()
register_tagger_folder()
register_routes()  # the live training view's history (GET /atelier/train/runs...)

NODES: list[type[io.ComfyNode]] = [
    AtelierVersion,
    *dataset.NODES,
    *captioning.NODES,
    *training.NODES,
    *kohya_export.NODES,
    *sliders.NODES,
    *copy_machine.NODES,
    *lora_tools.NODES,
    *grids.NODES,
    *compare.NODES,
    *leakage.NODES,
]
for _node in NODES:
    guard_messages(_node)  # errors and reports shown to clients name folders, never server paths


class AtelierExtension(ComfyExtension):
    """Lists Atelier's nodes for ComfyUI's V3 loader."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
