"""The trainer's objectives against ComfyUI's own model_sampling objects (run in the host's Python)."""

import json
import subprocess
from pathlib import Path

from comfy_host import ROOT


def test_targets_from_comfyui_model_sampling(comfy_server):
    script = Path(__file__).with_name("objectives_parity.py")
    proc = subprocess.run([comfy_server.python, str(script), str(ROOT)], cwd=comfy_server.checkout,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(errors) == {f"{f}{s}" for f in ("eps", "v", "flow") for s in ("", "_sigma", "_denoised")}
    assert all(v < 1e-4 for v in errors.values()), errors
