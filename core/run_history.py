"""Each training run's live history (loss, learning rate, speed, previews), kept so a reloaded page or a second tab
can redraw it. Nothing here knows ComfyUI: the node records, a route serves. Bounded: a fixed number of runs and of
points per run (older points are thinned, not dropped at random), so a long run never grows memory without limit.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass, field

MAX_RUNS = 32  # the oldest run is forgotten when a new one starts past this
MAX_POINTS = 20_000  # per run; past it every other point is dropped (the curve keeps its shape)
CSV_COLUMNS = ("step", "total", "epoch", "loss", "smoothed", "lr", "samples_per_second", "time")


@dataclass
class Run:
    run: str  # "<prompt id>:<node id>": runs never mix
    node: str
    name: str
    started: float = field(default_factory=time.time)
    total: int = 0
    points: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # {"step", "epoch", "images": [{filename, subfolder, type}]}
    stride: int = 1  # every `stride`-th step is kept once MAX_POINTS was reached
    finished: bool = False

    def summary(self) -> dict:
        last = self.points[-1] if self.points else {}
        return {"run": self.run, "node": self.node, "name": self.name, "started": self.started, "total": self.total,
                "step": last.get("step", 0), "finished": self.finished}

    def to_dict(self) -> dict:
        return {**self.summary(), "points": self.points, "samples": self.samples}


class RunHistory:
    """The store: thread-safe, bounded, keyed by run id."""

    def __init__(self, max_runs: int = MAX_RUNS, max_points: int = MAX_POINTS):
        self.max_runs, self.max_points = max_runs, max_points
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def start(self, run: str, node: str, name: str) -> Run:
        with self._lock:
            self._runs.pop(run, None)
            while len(self._runs) >= self.max_runs:
                self._runs.pop(next(iter(self._runs)))  # dicts keep insertion order: the oldest run goes
            self._runs[run] = Run(run, str(node), name)
            return self._runs[run]

    def step(self, run: str, point: dict) -> None:
        """Records one step's numbers (finite floats only; a NaN would break the page's JSON)."""
        with self._lock:
            r = self._runs.get(run)
            if r is None:
                return
            r.total = int(point.get("total", r.total))
            if int(point.get("step", 0)) % r.stride:
                return
            clean = {k: (float(v) if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else None)
                     for k, v in point.items() if k in CSV_COLUMNS}
            clean["time"] = time.time()
            r.points.append(clean)
            if len(r.points) > self.max_points:
                r.points = r.points[::2]
                r.stride *= 2

    def sample(self, run: str, entry: dict) -> None:
        with self._lock:
            if run in self._runs:
                self._runs[run].samples.append(entry)
                del self._runs[run].samples[:-200]  # the newest 200 preview sets

    def finish(self, run: str) -> None:
        with self._lock:
            if run in self._runs:
                self._runs[run].finished = True

    def runs(self) -> list[dict]:
        with self._lock:
            return [r.summary() for r in reversed(self._runs.values())]  # newest first

    def get(self, run: str) -> dict | None:
        with self._lock:
            r = self._runs.get(run)
            return r.to_dict() if r else None

    def csv(self, run: str) -> str | None:
        """The run's points as CSV (one row per kept step)."""
        data = self.get(run)
        if data is None:
            return None
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for point in data["points"]:
            writer.writerow({k: ("" if point.get(k) is None else point[k]) for k in CSV_COLUMNS})
        return out.getvalue()
