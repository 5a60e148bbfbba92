"""ComfyUI nodes of Atelier: thin wiring between ComfyUI objects and the pure `core/` and `trainers/` code.

This package is the only place that imports comfy, comfy_api, folder_paths, server or node_helpers. Importing the
package itself imports nothing of ComfyUI: the node list and registrations live in extension.py, so the headless
runner (nodes/job.py) can put a ComfyUI checkout on sys.path and set its options first.
"""
