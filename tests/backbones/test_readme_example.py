"""README stays true: its custom-family example (after ``<!-- example:custom-backbone -->``) runs as written,
and the family it registers passes the contract suite."""
from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import test_contract as contract

from meltr_ray.backbones import get_spec, unregister_backbone

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- example:custom-backbone -->"
CASE = ("framecls_tiny", "classify")


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md must hold one {MARKER}"
    found = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert found, f"no ```python block right after {MARKER}"
    return found.group(1)


@pytest.fixture(scope="module")
def example():
    """The example's namespace after running it (it registers framecls_tiny, unregistered afterwards)."""
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(readme_example(), str(README), "exec"), namespace)
        yield namespace
    finally:
        unregister_backbone(CASE[0])


def test_the_example_runs_and_trains(example, capsys):
    metrics = example["metrics"]
    assert (metrics["epoch"], metrics["step"], metrics["meta_steps"]) == (2, 8, 4)
    assert all(math.isfinite(metrics[k]) for k in ("loss_cls", "loss_next", "val_accuracy"))
    assert get_spec(CASE[0]).tasks["classify"].losses == ("cls", "next")


CHECKS = [contract.test_builds_and_example_batch_has_the_spec_keys,
          contract.test_forward_returns_exactly_the_spec_losses_finite_in_order,
          contract.test_tasks_primary_gives_the_primary_alone,
          contract.test_backward_reaches_every_trainable_parameter,
          contract.test_hypergradient_at_the_default_scope_is_finite_and_non_zero,
          contract.test_one_bilevel_step_moves_meltr_and_the_backbone,
          contract.test_trainer_checkpoint_round_trips,
          contract.test_pretrained_and_the_checkpoint_filter_load_the_familys_own_weights,
          contract.test_evaluate_returns_finite_floats_and_keeps_the_mode]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("test_") for c in CHECKS])
def test_the_example_family_passes_the_contract(example, check, tmp_path):
    kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(check).parameters else {}
    check(CASE, **kwargs)
