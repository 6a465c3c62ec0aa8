"""The book builds offline with warnings as errors (what `make book` runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_book_builds_without_warnings(tmp_path):
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else shutil.which("jupyter-book"), "build", "--all", "-W", "-n",
           "--keep-going", "--path-output", str(tmp_path), str(ROOT / "book")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    intro = (html / "notebooks" / "00_introduction.html").read_text()
    assert "InternVL2.5-78B" in intro and "<table" in intro
    assert "first open model above 70" in intro
