"""The backbone contract, checked for every registered test-sized variant × every task of its spec.

The cases come from the registry (``meltr_ray.backbones.tiny_variants()``: every ``*_tiny`` name and every spec
marked ``test_sized``), so a new family gets this whole suite by registering a tiny variant. ``featlm_tiny``
is a family defined only in ``tests/fixtures/plugin_family.py`` and registered from outside the package, the
way a user's plugin is: it must pass exactly what the built-in families pass.

Per (variant, task): it builds; ``spec.example_batch`` goes through ``forward`` and gives exactly the spec's
losses, finite scalars, in MELTR order; ``tasks=[primary]`` gives the primary alone; backward reaches every
trainable parameter; the hypergradient at the spec's default meta scope is finite and non-zero; one
``build_run`` bilevel step (meta_every=1) moves MELTR; the trainer's checkpoint round-trips, and so do
``pretrained=`` and the spec's checkpoint filter on the family's own weights; ``evaluate`` gives finite floats.
"""
from __future__ import annotations

import fnmatch
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from meltr_ray.backbones import create_backbone, get_spec, import_plugin, tiny_variants
from meltr_ray.config import JobConfig
from meltr_ray.core.checkpoint import load_checkpoint, save_checkpoint
from meltr_ray.core.hypergrad import hypergradient, select_scope
from meltr_ray.core.meltr import stack_losses
from meltr_ray.run import build_run

PLUGIN = "tests.fixtures.plugin_family"
import_plugin(PLUGIN)            # registered from outside meltr_ray before the cases are collected
CASES = [(name, task) for name in tiny_variants() for task in get_spec(name).tasks]
BATCH = 2
# Parameters that cannot get a gradient from a task's full loss: {(variant, task): [fnmatch patterns]}, each
# with the reason. Empty: Violet and featlm build only the heads (and text embedder) their task uses.
NO_GRADIENT: dict = {}
SMALL_MELTR = {"meltr.preset": "meltr_tiny"}          # test-sized MELTR; its task count comes from the spec


@pytest.fixture(params=CASES, ids=[f"{name}-{task}" for name, task in CASES])
def case(request):
    return request.param


def job(name: str, task: str, seed: int = 0) -> JobConfig:
    """A run of ``name``/``task`` with a small MELTR, a meta step every step and K = 1 Neumann term."""
    return JobConfig().with_overrides({
        "backbone.name": name, "backbone.task": task, **SMALL_MELTR, "meta.meta_every": 1,
        "meta.neumann_steps": 1, "optim.schedule": "constant", "optim.backbone_lr": 1e-3,
        "train.batch_size": BATCH, "train.seed": seed, "train.log_every": 1})


def example(name: str, task: str, seed: int = 0) -> dict:
    return get_spec(name).example_batch(task, BATCH, torch.Generator().manual_seed(seed))


def built(name: str, task: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone(name, task=task)


def changed(before: dict, module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_suite_covers_violet_and_the_plugin_family():
    names = {name for name, _ in CASES}
    assert {"violet_tiny", "featlm_tiny"} <= names
    assert get_spec("featlm_tiny").tasks["retrieval"].data.modality == "features"   # not Violet's modality


def test_builds_and_example_batch_has_the_spec_keys(case):
    name, task = case
    spec, model = get_spec(name), built(*case)
    batch = example(*case)
    assert isinstance(model, torch.nn.Module) and callable(model.evaluate)
    assert set(spec.tasks[task].data.batch_keys) <= set(batch), "example_batch lacks keys the spec reads"


def test_forward_returns_exactly_the_spec_losses_finite_in_order(case):
    name, task = case
    losses = built(*case)(example(*case))
    assert list(losses) == list(get_spec(name).tasks[task].losses)
    for loss, value in losses.items():
        assert torch.is_tensor(value) and value.dim() == 0 and bool(torch.isfinite(value)), loss


def test_tasks_primary_gives_the_primary_alone(case):
    name, task = case
    primary = get_spec(name).tasks[task].primary
    losses = built(*case)(example(*case), tasks=[primary])
    assert list(losses) == [primary] and bool(torch.isfinite(losses[primary]))


def test_backward_reaches_every_trainable_parameter(case):
    model = built(*case)
    sum(model(example(*case)).values()).backward()
    exempt = NO_GRADIENT.get(case, [])
    trainable = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and not any(fnmatch.fnmatchcase(n, pat) for pat in exempt)]
    assert [n for n, p in trainable if p.grad is None] == []
    # Reached, finite; not asserted non-zero: a bias under a softmax over scores of one head (Violet's MC and VTM
    # heads) has an exactly zero gradient by shift invariance, and that is correct.
    assert [n for n, p in trainable if not bool(torch.isfinite(p.grad).all())] == []


def test_hypergradient_at_the_default_scope_is_finite_and_non_zero(case):
    name, task = case
    run = build_run(job(*case))
    spec, losses = run.spec, get_spec(name).tasks[task].losses
    scope = select_scope(run.model, spec.meta_scope(run.model))
    assert {id(p) for p in scope} == run.trainer.scope_ids                 # the run uses the spec's scope
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    assert 0 < len(scope) <= len(trainable)
    outer_batch, inner_batch = example(*case, seed=1), example(*case, seed=2)
    with sdpa_kernel(SDPBackend.MATH):            # as the trainer's meta step: double backward everywhere
        outer = run.model(outer_batch, tasks=[losses[0]])[losses[0]]
        inner = run.combiner(stack_losses(run.model(inner_batch), losses))
        grads = hypergradient(outer, inner, scope, list(run.combiner.parameters()), neumann_steps=1,
                              neumann_lr=1e-3)
    assert len(grads) == len(list(run.combiner.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_one_bilevel_step_moves_meltr_and_the_backbone(case):
    run = build_run(job(*case))
    phi, w = snapshot(run.combiner), snapshot(run.model)
    metrics = run.trainer.step(example(*case))
    counters = run.trainer.counters
    assert (counters.step, counters.meta_steps, counters.skipped_inner, counters.skipped_meta) == (1, 1, 0, 0)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert changed(phi, run.combiner), "the meta step left MELTR's parameters unchanged"
    assert changed(w, run.model), "the inner step left the backbone unchanged"


def test_trainer_checkpoint_round_trips(case, tmp_path):
    """Save after a step, load into a run built from another seed: every tensor equal, and the next step too."""
    run = build_run(job(*case))
    run.trainer.step(example(*case))
    state = run.trainer.state_dict()
    save_checkpoint(state, tmp_path / "ckpt")
    fresh = build_run(job(*case, seed=1))
    assert changed(snapshot(run.model), fresh.model)                      # the load has something to do
    fresh.trainer.load_state_dict(load_checkpoint(tmp_path / "ckpt"))
    assert_same(fresh.trainer.state_dict(), state)
    for trainer in (run.trainer, fresh.trainer):
        torch.manual_seed(5)                     # the same masks and dropout for both continuations
        trainer.step(example(*case, seed=3))
    assert_same(fresh.trainer.state_dict(), run.trainer.state_dict())


def assert_same(a, b, where: str = "state") -> None:
    """Equal nested state: tensors bit-equal, containers key by key, everything else ``==``."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_pretrained_and_the_checkpoint_filter_load_the_familys_own_weights(case, tmp_path):
    """``pretrained=`` a local file of the family's own weights gives them back; so does the spec's checkpoint
    filter, when it declares one, on the same weights saved from a DDP-wrapped model (``module.`` keys)."""
    name, task = case
    spec, source = get_spec(name), built(*case)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(1)
    loaded = create_backbone(name, task=task, pretrained=str(tmp_path / "weights.pt"))
    assert_same(loaded.state_dict(), source.state_dict())
    if spec.checkpoint_filter is not None:
        target = built(*case, seed=1)
        state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
        full, report = spec.checkpoint_filter(state, target, "own weights")
        target.load_state_dict(full, strict=True)
        assert_same(target.state_dict(), source.state_dict())
        assert set(report.loaded) == set(source.state_dict()) and not report.initialised


def test_evaluate_returns_finite_floats_and_keeps_the_mode(case):
    model = built(*case).train()
    metrics = model.evaluate([example(*case, seed=1), example(*case, seed=2)])
    assert metrics and all(isinstance(k, str) for k in metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert model.training
