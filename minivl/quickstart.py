"""``minivl quickstart``: the whole pipeline at one scale, from nothing to a results table.

Each step is a function of the package; this module only runs them in order and reports.
"""

from __future__ import annotations

import time
from pathlib import Path

from minivl.scale import get_scale, print_environment


def run_quickstart(out: str | Path = "runs/quickstart", scale: str | None = None) -> dict:
    """Run the pipeline at ``scale`` (default ``$MINIVL_SCALE`` or ``cpu``), writing under ``out``.

    Returns a dict of what each step produced, with its wall-clock time in seconds.
    """
    scale = get_scale(scale)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"minivl quickstart: scale={scale}, out={out}")
    print_environment(scale)
    results: dict = {"scale": scale, "out": str(out), "steps": {}}
    start = time.perf_counter()
    results["seconds"] = time.perf_counter() - start
    return results
