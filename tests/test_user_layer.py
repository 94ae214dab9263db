"""The user layer says what it does: real signatures and docstrings, explicit overrides win over the search,
the demo refuses options it would ignore, and a launcher whose backbone is not registered says so."""
from __future__ import annotations

import inspect
import os
import pydoc
import subprocess
import sys

import pytest

import meltr_ray
from meltr_ray import api
from meltr_ray.cli import build_parser
from meltr_ray.launch import registered_families, tune_main
from meltr_ray.spaces import load_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, arguments", [
    ("tune", ["backbone", "task", "data", "space", "num_samples", "overrides", "address", "callbacks"]),
    ("train", ["backbone", "task", "data", "recipe", "overrides", "epochs", "address"])])
def test_help_shows_the_real_signature_and_docstring(name, arguments):
    function = getattr(meltr_ray, name)
    assert function is getattr(api, name)
    assert list(inspect.signature(function).parameters)[:3] == ["backbone", "task", "data"]
    assert set(arguments) <= set(inspect.signature(function).parameters)
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    assert "overrides" in text and "address" in text and "*args" not in text


def test_importing_the_package_imports_neither_ray_nor_torch():
    code = "import sys, meltr_ray; meltr_ray.tune; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_an_explicit_override_of_a_searched_key_fixes_it(capsys):
    space = load_space("default")
    fixed = api.fix_searched(space, {"reg_weight": 0.7, "meta.meta_every": 4, "train.batch_size": 16})
    assert set(fixed.params) == set(space.params) - {"reg_weight", "meta_every"}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["meltr_ray.tune: reg_weight=0.7, meta_every=4 fixed by overrides, not searched"]
    assert api.fix_searched(space, {"train.batch_size": 16}) is space
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="nothing is left to search; use meltr_ray.train"):
        api.fix_searched(space, {name: 1 for name in space.params})


@pytest.mark.parametrize("option", ["--data", "--backbone", "--task", "--recipe", "--space"])
def test_the_demo_rejects_options_it_does_not_use(option, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["demo", option, "x"])
    assert exit_.value.code == 2
    assert f"{option} is not used by the demo" in capsys.readouterr().err


def test_the_demo_keeps_the_options_it_uses():
    args = build_parser().parse_args(["demo", "--num-samples", "2", "--epochs", "1", "--storage", "/tmp/x",
                                      "--address", "auto", "--set", "train.batch_size=4"])
    assert (args.num_samples, args.epochs, args.storage, args.address) == (2, 1, "/tmp/x", "auto")
    assert (args.data, args.backbone, args.task) == (None, "violet", "retrieval")
    assert args.overrides == [("train.batch_size", 4)]


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("3E5", 3e5), (".5", 0.5), ("-2e-3", -2e-3), ("+1.5e+2", 150.0), ("2.", 2.0), ("1.0e4", 1e4),
    ("5", 5), ("-3", -3), ("0.25", 0.25),                               # YAML's own numbers, ints stay ints
    ("adamw", "adamw"), ("'1e-4'", "1e-4"), ("1e-4x", "1e-4x"), ("e5", "e5"), ("1e", "1e"),   # strings stay
    ("null", None), ("true", True), ("[0.9, 0.999]", [0.9, 0.999])])
def test_set_reads_numbers_yaml_1_1_leaves_as_strings(text, value):
    """PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4'; --set must give a float, and only there."""
    args = build_parser().parse_args(["demo", "--set", f"optim.backbone_lr={text}"])
    (key, parsed), = args.overrides
    assert key == "optim.backbone_lr" and parsed == value and type(parsed) is type(value)


def test_experiment_set_reads_values_as_the_launchers_do():
    """`meltr-ray experiment digits --set` and the launchers' --set are one parser."""
    args = build_parser().parse_args(["experiment", "digits", "--set", "meta.reg_weight=1e-1",
                                      "--set", "meltr.start='1e-4'", "--set", "train.epochs=3"])
    assert args.overrides == [("meta.reg_weight", 0.1), ("meltr.start", "1e-4"), ("train.epochs", 3)]
    assert type(args.overrides[2][1]) is int


def test_a_set_learning_rate_reaches_the_config_as_a_float():
    from meltr_ray.config import JobConfig
    args = build_parser().parse_args(["demo", "--set", "optim.backbone_lr=1e-4", "--set", "meta.reg_weight=3E-1"])
    cfg = JobConfig().with_overrides(dict(args.overrides)).validate()
    assert cfg.optim.backbone_lr == 1e-4 and cfg.meta.reg_weight == 0.3


def test_a_launcher_whose_default_backbone_is_not_registered_exits_2(capsys, monkeypatch):
    """An installation without UniVL (its specs removed from the registry here): the sentiment launcher's
    default backbone is missing — one line, exit code 2, the registered families named."""
    from meltr_ray.backbones import _registry
    _registry.discover()
    specs = {n: s for n, s in _registry._SPECS.items() if s.family != "univl"}
    monkeypatch.setattr(_registry, "_SPECS", specs)
    families = registered_families()
    assert families and "univl" not in families          # the registry, not this test, says what exists
    assert tune_main("sentiment", argv=["--data", "shards/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone 'univl' is not available in this release" in err[0]
    assert all(family in err[0] for family in families)


def test_a_launcher_given_an_unregistered_backbone_exits_2():
    proc = subprocess.run([sys.executable, "launchers/tune_captioning.py", "--backbone", "nosuchnet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tune_captioning.py: error: backbone 'nosuchnet' is not available in this release "
                           "(registered families: ")
    assert "univl" in line and "violet" in line


def test_a_launcher_that_needs_data_says_so(capsys):
    assert tune_main("qa_oe", argv=[], needs_data=True) == 2
    assert "--data is required" in capsys.readouterr().err
