"""The repository and the package stand alone: a plain wheel carries the search spaces, no test reads files
outside the repository, and README's backbone table names exactly the families the registry builds."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_plain_wheel_ships_the_search_spaces(tmp_path):
    """`pip wheel .` of a copy of the sources, installed into a bare folder, loads every space from there."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "meltr_ray", source / "meltr_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(tmp_path / "dist")])
    (wheel,) = (tmp_path / "dist").glob("meltr_ray-*.whl")
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)])
    code = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            "import meltr_ray.spaces as spaces\n"
            f"assert spaces.__file__.startswith({str(site)!r}), spaces.__file__\n"
            "print(sorted(spaces.list_spaces()))\n"
            "print(spaces.load_space('demo').source)\n"
            "print(spaces.space_for('violet_base', 'qa_mc').metric)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env).stdout.splitlines()
    shipped = sorted(p.stem for p in (ROOT / "meltr_ray" / "tune_spaces").glob("*.yaml"))
    assert out[0] == str(shipped) and "demo" in shipped
    assert out[1].startswith(str(site)) and out[1].endswith("demo.yaml")
    assert out[2] == "val_accuracy"


def test_the_top_level_tune_spaces_folder_shows_the_shipped_files():
    assert (ROOT / "tune_spaces").is_dir()
    assert sorted(p.name for p in (ROOT / "tune_spaces").glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "meltr_ray" / "tune_spaces").glob("*.yaml"))


def test_no_test_reads_outside_the_repository():
    """Fixtures live in tests/fixtures: a fresh clone runs every test with nothing beside it."""
    outside = re.compile(r"(\.\./shared|/work/shared|shared/reference|/work/main)")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                 if p.name != Path(__file__).name and outside.search(p.read_text())]
    assert offenders == []


def _readme_section(name: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index(f"<!-- section:{name} -->"):text.index(f"<!-- /section:{name} -->")]


def _table(section: str) -> list[list[list[str]]]:
    """Rows of the section's Markdown table (header and rule dropped), each cell a list of `code` items."""
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[re.findall(r"`([^`]+)`", cell) for cell in line.strip("|").split("|")] for line in lines]


def test_readme_backbone_table_is_what_the_registry_builds():
    """Families and variants as ``list_backbones()`` reports them, in a fresh process (no test plugins), and every
    task the table names builds on the family's smallest variant; "Coming next" names no registered family."""
    section = _readme_section("backbones")
    rows = _table(section)
    claims = [{"family": family[0], "variants": variants, "tasks": tasks} for family, variants, tasks in rows]
    code = ("import json, sys, torch, meltr_ray\n"
            "torch.set_num_threads(1)\n"
            "claims, built = json.loads(sys.argv[1]), {}\n"
            "for claim in claims:\n"
            "    variant = min(claim['variants'], key=lambda n: (not n.endswith('_tiny'), n))\n"
            "    for task in claim['tasks']:\n"
            "        try:\n"
            "            meltr_ray.create_backbone(variant, task=task); built[task] = 'ok'\n"
            "        except Exception as err:\n"
            "            built[task] = repr(err)\n"
            "from meltr_ray.backbones import list_families\n"
            "print(json.dumps({'names': meltr_ray.list_backbones(), 'families': list_families(), 'built': built}))\n")
    import json
    out = _run([sys.executable, "-c", code, json.dumps(claims)], cwd=ROOT).stdout.strip().splitlines()[-1]
    registry = json.loads(out)
    assert sorted(c["family"] for c in claims) == sorted(registry["families"])      # the specs' families
    assert sorted(v for c in claims for v in c["variants"]) == sorted(registry["names"])
    assert registry["built"] and all(v == "ok" for v in registry["built"].values()), registry["built"]
    (coming,) = [line for line in section.splitlines() if line.startswith("Coming next:")]
    assert not [c["family"] for c in claims if c["family"].lower() in coming.lower()]
