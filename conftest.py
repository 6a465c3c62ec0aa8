"""Test-wide settings: every notebook and test runs at smoke scale, with a private cache."""

import os
import tempfile

# Set before any kernel starts: nbval's kernels inherit this process's environment.
os.environ["MINIVL_SCALE"] = "smoke"
os.environ.setdefault("MINIVL_CACHE", tempfile.mkdtemp(prefix="minivl-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
