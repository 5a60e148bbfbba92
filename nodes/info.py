"""Version / environment report node: the smallest node that proves the pack loaded and can see IMAGEs."""

import torch
from .compat import io

from ..core import __version__
from ..core.report import describe_environment, describe_images


class AtelierVersion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierVersion",
            display_name="Atelier Version (Atelier)",
            category="atelier/utils",
            description="Reports Atelier's, torch's and ComfyUI's versions, and describes an optional IMAGE batch.",
            inputs=[
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="Optional IMAGE batch to describe (count, size, value range). Leave unconnected for "
                    "the version report alone.",
                ),
            ],
            outputs=[io.String.Output("report", tooltip="The same text the node shows.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images=None) -> io.NodeOutput:
        try:
            import comfyui_version  # lives in ComfyUI's root folder, which ComfyUI puts on sys.path

            comfy_version = comfyui_version.__version__
        except ImportError:
            comfy_version = "unknown"
        lines = [describe_environment(__version__, torch.__version__, comfy_version)]
        if images is not None:
            lines.append(describe_images(images))
        report = "\n".join(lines)
        return io.NodeOutput(report, ui={"text": [report]})
