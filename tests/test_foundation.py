"""The ground everything stands on: packaging, the scale knob, the command line, CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from minivl import cli
from minivl.chapters import CHAPTERS, chapter_map
from minivl.scale import SCALES, cache_dir, get_scale, pick

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env_pip_requirements() -> list[Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    for key in ("name", "channels", "dependencies"):
        assert key in env, f"environment.yml lacks {key!r}"
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    return [Requirement(s) for s in pip_lists[0] if not s.startswith(("-e", "."))]


def test_environment_yml_matches_pyproject():
    project = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
               for r in _pyproject()["project"]["dependencies"]}
    env = {canonicalize_name(r.name): r.specifier for r in _env_pip_requirements()}
    assert set(env) == set(project), (
        f"only in pyproject: {sorted(set(project) - set(env))}; only in environment.yml: {sorted(set(env) - set(project))}")
    for name, spec in project.items():
        assert env[name] == spec, f"{name}: pyproject {spec} vs environment.yml {env[name]}"


def test_no_cuda_heavy_dependencies():
    deps = _pyproject()["project"]["dependencies"]
    extras = _pyproject()["project"]["optional-dependencies"]
    names = {canonicalize_name(Requirement(r).name) for r in deps + extras["dev"]}
    assert not names & {"torchvision", "timm", "flash-attn"}, names
    assert [canonicalize_name(Requirement(r).name) for r in extras["gpu"]] == ["flash-attn"]


def test_scale_knob(monkeypatch):
    monkeypatch.delenv("MINIVL_SCALE", raising=False)
    assert get_scale() == "cpu"
    monkeypatch.setenv("MINIVL_SCALE", " GPU ")
    assert get_scale() == "gpu"
    assert pick(smoke=1, cpu=2, gpu=3) == 3
    assert pick(smoke=1, cpu=2, gpu=3, scale="smoke") == 1
    monkeypatch.setenv("MINIVL_SCALE", "laptop")
    with pytest.raises(ValueError, match="unknown scale 'laptop'.*MINIVL_SCALE"):
        get_scale()
    assert SCALES == ("smoke", "cpu", "gpu")


def test_tests_run_at_smoke_scale():
    assert get_scale() == "smoke"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVL_CACHE", str(tmp_path / "c"))
    path = cache_dir("models", "tiny")
    assert path == tmp_path / "c" / "models" / "tiny" and path.is_dir()


def test_cli_help_lists_subcommands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^    ([a-z]+)\b", out, re.M))
    assert {"info", "quickstart"} <= listed, out
    parser_choices = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert listed == set(parser_choices), "--help must list exactly the subcommands that exist"
    for name in listed:  # every listed subcommand has a working --help
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0


def test_python_dash_m_minivl():
    out = subprocess.run([sys.executable, "-m", "minivl", "info", "--scale", "smoke"],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"^scale\s+smoke$", out, re.M), out
    assert re.search(r"^torch\s+\d", out, re.M), out


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    assert "make test" in commands, "README must show `make test`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run exactly `make test`"
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test: .*\n\t(.*)$", makefile, re.M).group(1)
    assert recipe.strip() == "$(PY) -m pytest", f"`make test` must run the full pytest suite, got {recipe!r}"


def test_every_notebook_is_in_the_book_and_paired():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert files == [f"notebooks/{n}" for n in notebooks], "book/_toc.yml must list every notebook in order"
    known = {c.notebook for c in CHAPTERS}
    for name in notebooks:
        assert name in known, f"{name} missing from minivl.chapters.CHAPTERS"
        assert (ROOT / "notebooks" / f"{name}.py").exists(), f"{name}.ipynb has no py:percent source"


def test_notebook_sources_in_sync():
    jupytext = pytest.importorskip("jupytext")
    for py in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        a = [(c.cell_type, c.source.strip()) for c in jupytext.read(py).cells]
        b = [(c.cell_type, c.source.strip()) for c in jupytext.read(py.with_suffix(".ipynb")).cells]
        assert a == b, f"{py.name} and its .ipynb differ: run `make notebooks` (or jupytext --update --to ipynb)"


def test_chapter_map_reports_status():
    rows = chapter_map()
    assert [r["chapter"] for r in rows] == [f"{i:02d}" for i in range(16)]
    assert rows[0]["status"] == "written"


def test_every_top_level_export_resolves():
    import minivl

    for name in minivl._EXPORTS:
        assert getattr(minivl, name) is not None, name
    assert minivl.dynamic_preprocess.__module__ == "minivl.vision.tiling"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        minivl.nope  # noqa: B018
