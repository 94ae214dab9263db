"""The core must import and work with Ray absent: Ray lives under meltr_ray/cluster/ only."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import meltr_ray

ROOT = Path(meltr_ray.__file__).parent


def core_modules():
    names = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="meltr_ray."):
        if info.name.startswith(("meltr_ray.cluster", "meltr_ray.api", "meltr_ray.cli")):
            continue
        names.append(info.name)
    return names


def test_every_core_module_imports_with_ray_blocked():
    modules = core_modules()
    assert "meltr_ray.core.hypergrad" in modules and "meltr_ray.core.loop" in modules
    code = ("import sys; sys.modules['ray'] = None\n"
            "import importlib\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules if sys.modules[m] is not None)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_ray_imports_only_under_cluster():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("cluster/"):
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ray", "from ray")):
                if rel not in ("api.py", "cli.py"):
                    offenders.append(f"{rel}: {stripped}")
                elif not line.startswith((" ", "\t")):
                    offenders.append(f"{rel} (top level): {stripped}")
    assert offenders == []


def test_build_run_trains_a_registered_backbone_with_ray_blocked():
    """``meltr_ray.build_run`` (config → backbone, MELTR, optimizers, trainer) and a bilevel step need no Ray."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "import torch, meltr_ray\n"
            "torch.set_num_threads(1)\n"
            "cfg = meltr_ray.JobConfig().with_overrides({'backbone.name': 'violet_tiny', 'meta.meta_every': 1,\n"
            "    'meltr.d_model': 16, 'meltr.d_ffn': 16, 'meltr.d_scale': 8, 'meltr.n_heads': 2})\n"
            "run = meltr_ray.build_run(cfg, steps_per_epoch=1)\n"
            "batch = run.spec.example_batch('retrieval', 2, torch.Generator().manual_seed(0))\n"
            "metrics = run.trainer.step(batch)\n"
            "assert 'meta_grad_norm' in metrics and run.trainer.counters.meta_steps == 1, metrics\n"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules if sys.modules[m] is not None)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
