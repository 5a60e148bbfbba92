"""The extension ComfyUI loads: registers folder types and routes and lists every node (imported by the pack's
`comfy_entrypoint`, never by the package `nodes` itself, so `python -m atelier.nodes.job` can configure ComfyUI
before anything of it is imported)."""


from .compat import ComfyExtension, io

from . import (captioning, compare, copy_machine, dataset, finetune, grids, hypernetwork, job_export, kohya_export,
               leakage, lora_tools, pairs, sliders, training)
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
    *hypernetwork.NODES,
    *finetune.NODES,
    *job_export.NODES,
    *kohya_export.NODES,
    *sliders.NODES,
    *copy_machine.NODES,
    *lora_tools.NODES,
    *grids.NODES,
    *compare.NODES,
    *leakage.NODES,
    *pairs.NODES,
]
for _node in NODES:
    guard_messages(_node)  # errors and reports shown to clients name folders, never server paths


class AtelierExtension(ComfyExtension):
    """Lists Atelier's nodes for ComfyUI's V3 loader."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
