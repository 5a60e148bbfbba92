"""The live training view's server side: every run's history (core/run_history.py) recorded from the training node
and served to the page (web/live_chart.js), so a reload or a second tab redraws the whole curve.

Routes (read-only, JSON or CSV, no file access):
  GET /atelier/train/runs              the runs, newest first
  GET /atelier/train/runs/{run}        one run's points and preview samples
  GET /atelier/train/runs/{run}.csv    one run's points as CSV
"""

from __future__ import annotations

import re

from ..core.run_history import RunHistory

HISTORY = RunHistory()
RUN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")  # "<prompt id>:<node id>"; anything else is not one of ours


def run_id(node_id) -> str:
    """This execution's run id: the prompt being executed and the node, so two runs never mix."""
    try:
        from server import PromptServer

        prompt = getattr(PromptServer.instance, "last_prompt_id", None) or "prompt"
    except (ImportError, AttributeError):
        prompt = "prompt"
    return f"{prompt}:{node_id}"


def register_routes() -> bool:
    """Adds the routes to ComfyUI's server (once, at import, before the server starts); False outside a server."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    routes = PromptServer.instance.routes

    @routes.get("/atelier/train/runs")
    async def list_runs(request):
        return web.json_response(HISTORY.runs())

    @routes.get("/atelier/train/runs/{run}")
    async def get_run(request):
        run = request.match_info["run"]
        as_csv = run.endswith(".csv")
        run = run[:-4] if as_csv else run
        if not RUN_ID.match(run):
            return web.json_response({"error": "not a run id"}, status=400)
        if as_csv:
            text = HISTORY.csv(run)
            if text is None:
                return web.json_response({"error": f"no run {run}"}, status=404)
            return web.Response(text=text, content_type="text/csv", headers={
                "Content-Disposition": f'attachment; filename="atelier-{run.replace(":", "-")}.csv"'})
        data = HISTORY.get(run)
        return web.json_response(data) if data is not None else web.json_response({"error": f"no run {run}"},
                                                                                  status=404)

    return True
