"""The live view's history store: runs kept apart, bounded in runs and points, NaN-free JSON, CSV export."""

import json
import math

from atelier.core.run_history import CSV_COLUMNS, RunHistory


def point(step, loss=0.5, total=10):
    return {"step": step, "total": total, "epoch": 1, "loss": loss, "smoothed": loss, "lr": 1e-4,
            "samples_per_second": 2.0, "ignored": "x"}


def test_runs_never_mix_and_the_newest_comes_first():
    h = RunHistory()
    h.start("p1:4", 4, "a")
    h.start("p2:4", 4, "a")
    h.step("p1:4", point(1, 0.9))
    h.step("p2:4", point(1, 0.1))
    h.step("unknown:1", point(1))  # a run that was never started is ignored
    assert [r["run"] for r in h.runs()] == ["p2:4", "p1:4"]
    assert [p["loss"] for p in h.get("p1:4")["points"]] == [0.9]
    assert h.get("p2:4")["points"][0]["loss"] == 0.1 and "ignored" not in h.get("p2:4")["points"][0]
    assert h.get("nope") is None and h.csv("nope") is None


def test_runs_and_points_are_bounded_and_thinned_evenly():
    h = RunHistory(max_runs=3, max_points=100)
    for i in range(5):
        h.start(f"p{i}:1", 1, "x")
    assert [r["run"] for r in h.runs()] == ["p4:1", "p3:1", "p2:1"]
    for step in range(1, 1001):
        h.step("p4:1", point(step, total=1000))
    steps = [p["step"] for p in h.get("p4:1")["points"]]
    assert len(steps) <= 100 and steps[0] <= 16 and steps[-1] >= 900  # the whole run, thinned, not truncated
    assert all(b > a for a, b in zip(steps, steps[1:]))


def test_non_finite_numbers_become_null_so_the_json_stays_valid():
    h = RunHistory()
    h.start("p:1", 1, "x")
    h.step("p:1", point(1, math.nan))
    h.step("p:1", point(2, math.inf))
    text = json.dumps(h.get("p:1"), allow_nan=False)  # raises if a NaN slipped through
    assert [p["loss"] for p in json.loads(text)["points"]] == [None, None]


def test_csv_has_one_row_per_kept_step_and_samples_are_kept():
    h = RunHistory()
    h.start("p:1", 1, "x")
    for step in (1, 2, 3):
        h.step("p:1", point(step, 1.0 / step))
    h.sample("p:1", {"step": 2, "epoch": 1, "images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]})
    h.finish("p:1")
    rows = h.csv("p:1").strip().split("\n")
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) == 4 and rows[2].startswith("2.0,10.0,1.0,0.5,")
    data = h.get("p:1")
    assert data["finished"] and data["samples"][0]["images"][0]["filename"] == "a.png" and data["step"] == 3
