"""One knob for the size of everything: ``MINIVL_SCALE`` = ``smoke`` | ``cpu`` | ``gpu``.

Every chapter and every command runs at one of three scales (DESIGN section 1):

* ``smoke``: CI and tests, tiny models, a handful of samples, seconds per notebook;
* ``cpu`` (default): a reader's laptop, a tiny VLM that really learns in minutes;
* ``gpu``: real InternVL 2.5 checkpoints and data sets.

A scale only picks sizes, step counts and sources; the code is the same. Notebooks and the
command line ask :func:`get_scale` for the active scale and :func:`pick` for a value::

    steps = pick(smoke=3, cpu=400, gpu=20_000)

Explained in chapter 0 (``notebooks/00_introduction.ipynb``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TypeVar

SCALES = ("smoke", "cpu", "gpu")
DEFAULT_SCALE = "cpu"
ENV_VAR = "MINIVL_SCALE"

T = TypeVar("T")


def get_scale(scale: str | None = None) -> str:
    """Return the active scale: ``scale`` if given, else ``$MINIVL_SCALE``, else ``"cpu"``.

    Raises ``ValueError`` for anything but ``smoke``, ``cpu`` or ``gpu``.
    """
    value = scale if scale is not None else os.environ.get(ENV_VAR, DEFAULT_SCALE)
    value = value.strip().lower()
    if value not in SCALES:
        source = "argument" if scale is not None else f"${ENV_VAR}"
        raise ValueError(f"unknown scale {value!r} (from {source}); expected one of {', '.join(SCALES)}")
    return value


def pick(*, smoke: T, cpu: T, gpu: T, scale: str | None = None) -> T:
    """Pick the value for the active scale (see :func:`get_scale`)."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[get_scale(scale)]


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str | None = None):
    """bfloat16 on a GPU that supports it, float32 elsewhere (CPU runs stay reproducible)."""
    import torch

    device = device or default_device()
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def environment_info(scale: str | None = None) -> dict[str, str]:
    """Versions, device, dtype and scale: what the first cell of every chapter prints."""
    import importlib.metadata as md

    import torch

    info = {"python": platform.python_version()}
    for name in ("minivl", "torch", "transformers", "accelerate", "peft", "datasets"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = "not installed"
    device = default_device()
    info["device"] = device
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    info["dtype"] = str(default_dtype(device)).replace("torch.", "")
    info["torch threads"] = str(torch.get_num_threads())
    info["scale"] = get_scale(scale)
    return info


def print_environment(scale: str | None = None) -> dict[str, str]:
    """Print :func:`environment_info` as an aligned table and return it."""
    info = environment_info(scale)
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return info


def cache_dir(*parts: str) -> Path:
    """Where slow results are cached (``$MINIVL_CACHE``, else ``~/.cache/minivl``), per scale.

    Chapters reuse trained models and generated data from here instead of recomputing them.
    The directory is created on first use.
    """
    root = Path(os.environ.get("MINIVL_CACHE", Path.home() / ".cache" / "minivl")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
