"""Pure PyTorch training for Atelier. Nothing here knows ComfyUI.

The trainer talks to a model only through the denoiser contract `denoise(x_t, sigma, cond, **extra)` and a
model-sampling description, and reports through callbacks (`on_step`, `on_sample`, `on_checkpoint`); the
nodes adapt ComfyUI's ModelPatcher, progress bar and websocket to those.
"""
