"""Host checks that run as scripts in ComfyUI's own Python (tests/host/*_check.py), started in the background.

The family checks need no server: each builds its tiny models in a fresh process of the host's Python and prints one
JSON line. On a two-core machine they ran one after another while the other core idled; here every check the
selected tests will ask for is queued when collection ends and run one at a time in a background thread (each with
OMP_NUM_THREADS=1), while the browser, core and earlier host tests use the other core. A test asks for its result
with `host_script` (same arguments as before) and waits only if its check has not finished yet. A test module says
which check each of its items runs with a module-level `SCRIPT_JOB(params) -> (script, timeout, args)`; checks no
module announces still run, at the call, in the test's own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent


def run_script(python: str, checkout: Path, root: Path, name: str, timeout: float, args: tuple,
               procs: set | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of tests/host/<name> run in the host's Python from its checkout; a run past
    `timeout` seconds is killed and reported as such."""
    cmd = [python, str(HERE / name), str(root), *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if procs is not None:
        procs.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n{name} {' '.join(args)} did not finish within {timeout} s and was stopped"
    finally:
        if procs is not None:
            procs.discard(proc)
    return proc.returncode, out, err


class ScriptPool:
    """Checks queued by (script, args), run one at a time in a background thread; results kept for the session."""

    def __init__(self, python: str, checkout: Path, root: Path):
        self.python, self.checkout, self.root = python, checkout, root
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-checks")
        self.futures: dict[tuple, Future] = {}
        self.procs: set = set()
        self.lock = threading.Lock()

    def submit(self, name: str, timeout: float, args: tuple) -> Future:
        key = (name, tuple(str(a) for a in args))
        with self.lock:
            if key not in self.futures:
                self.futures[key] = self.executor.submit(run_script, self.python, self.checkout, self.root, name,
                                                         timeout, key[1], self.procs)
            return self.futures[key]

    def close(self) -> None:
        """Drops queued checks and stops a running one (the session is over)."""
        for future in self.futures.values():
            future.cancel()
        for proc in list(self.procs):
            proc.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)


POOL: ScriptPool | None = None


def start(python: str, checkout: Path, root: Path, jobs: list[tuple[str, float, tuple]]) -> None:
    """Queues `jobs` (in the order the tests will ask for them) on the session's pool."""
    global POOL
    POOL = ScriptPool(python, checkout, root)
    for name, timeout, args in jobs:
        POOL.submit(name, timeout, args)


def stop() -> None:
    global POOL
    if POOL is not None:
        POOL.close()
        POOL = None


def result(python: str, checkout: Path, root: Path, name: str, timeout: float, args: tuple) -> dict:
    """The JSON object on the last output line of the check (from the pool when it was queued, else run now)."""
    key = tuple(str(a) for a in args)
    queued = POOL.futures.get((name, key)) if POOL is not None else None
    code, out, err = queued.result() if queued is not None else run_script(python, checkout, root, name, timeout, key)
    assert code == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])
