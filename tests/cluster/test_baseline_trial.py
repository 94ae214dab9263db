"""The plain-MTL baseline trial of a search space: suggested first and kept from the searcher, never cut by ASHA,
and set against the best MELTR trial in the summary (no Ray cluster needed: Tune's objects are driven directly)."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from rich.console import Console
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from meltr_ray.cluster.progress import print_summary, summary_record
from meltr_ray.cluster.search import BaselineFirst, make_scheduler, make_searcher, tuner_param_space
from meltr_ray.spaces import SpaceError, load_space, parse_space

MTL = {"meltr.combiner": "mtl"}
MARKER = {"meltr.combiner": "meltr"}


class RecordingSearcher(Searcher):
    """Suggests {"reg_weight": n} and records what it is told."""

    def __init__(self):
        super().__init__(metric="val_r1", mode="max")
        self.told, self.n = [], 0

    def suggest(self, trial_id):
        self.n += 1
        return {"reg_weight": float(self.n)}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(trial_id)


def test_the_baseline_is_suggested_first_and_never_reaches_the_searcher():
    inner = RecordingSearcher()
    searcher = BaselineFirst(inner, MTL, MARKER)
    assert searcher.suggest("t0") == MTL
    assert searcher.suggest("t1") == {"meltr.combiner": "meltr", "reg_weight": 1.0}
    assert searcher.suggest("t2") == {"meltr.combiner": "meltr", "reg_weight": 2.0}
    for trial in ("t0", "t1", "t2"):
        searcher.on_trial_complete(trial, {"val_r1": 10.0})
    assert inner.told == ["t1", "t2"]
    restored = BaselineFirst(RecordingSearcher(), {}, {})
    restored.set_state(searcher.get_state())
    assert restored.suggest("t3") != MTL                       # a restored search does not run the baseline again


def test_the_demo_space_runs_its_baseline_then_the_paper_setting():
    space = load_space("demo")
    assert tuner_param_space(space) == {}                   # the searcher holds the space, not Tune's config
    searcher = make_searcher(space, seed=0, searched_marker=MARKER)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first == MTL
    assert second["meltr.combiner"] == "meltr" and second["reg_weight"] == 0.3 and set(space.params) <= set(second)


def _trial(trial_id, config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def test_asha_never_cuts_the_baseline_and_ranks_meltr_trials_among_themselves():
    scheduler = make_scheduler(load_space("demo"), epochs=4)
    scheduler.set_search_properties("val_r1", "max")
    baseline = _trial("mtl", MTL)
    good, bad = _trial("good", MARKER), _trial("bad", MARKER)
    for trial in (baseline, good, bad):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, good, {"epoch": 1, "val_r1": 30.0}) == TrialScheduler.CONTINUE
    # the baseline scores worst at the rung and still continues
    assert scheduler.on_trial_result(None, baseline, {"epoch": 1, "val_r1": 1.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, bad, {"epoch": 1, "val_r1": 10.0}) == TrialScheduler.STOP
    scheduler.on_trial_complete(None, baseline, {"epoch": 4, "val_r1": 2.0})


def test_a_baseline_must_be_a_fixed_valid_setting():
    base = {"metric": "val_r1", "mode": "max", "params": {"reg_weight": {"distribution": "choice", "values": [0.1]}}}
    assert parse_space({**base, "baseline": MTL}).trial_keys == ["meltr.combiner", "reg_weight"]
    with pytest.raises(SpaceError, match="baseline.meltr.combiner"):
        parse_space({**base, "baseline": {"meltr.combiner": "sum"}})
    with pytest.raises(SpaceError, match="baseline.reg_weight"):
        parse_space({**base, "baseline": {"reg_weight": 0.3}})


# ---- the summary ------------------------------------------------------------------------------------------------
class FakeGrid(list):
    """What the summary reads of a ResultGrid: iteration, the experiment folder and the best result."""

    def __init__(self, results, experiment):
        super().__init__(results)
        self.experiment_path = str(experiment)

    def get_best_result(self):
        return max(self, key=lambda r: r.metrics["val_r1"])


def _result(trial_id, config, r1, experiment, **weights):
    checkpoint = f"{experiment}__train_runs/train-{trial_id}/epoch_002"
    metrics = {"trial_id": trial_id, "val_r1": r1, "epoch": 2, "checkpoint_path": checkpoint,
               **{f"weight_{k}": v for k, v in weights.items()}}
    return SimpleNamespace(config=config, metrics=metrics, error=None)


@pytest.fixture
def grid(tmp_path):
    experiment = tmp_path / ("a-very-long-experiment-name-" * 3 + "x")
    experiment.mkdir()
    return FakeGrid([_result("mtl0", MTL, 21.7, experiment, vtm=1.0, mtm=1.0, mvm=1.0),
                     _result("m1", {**MARKER, "reg_weight": 0.3}, 18.3, experiment, vtm=1.4, mtm=0.9, mvm=1.1),
                     _result("m2", {**MARKER, "reg_weight": 0.5}, 23.3, experiment, vtm=2.5, mtm=1.05, mvm=1.3)],
                    experiment)


def test_the_summary_sets_the_best_meltr_trial_against_mtl(grid):
    record = summary_record(grid, ["meltr.combiner", "reg_weight"], "val_r1", "max", MTL)
    assert record["best"]["trial_id"] == "m2"                    # the best trial that is not the baseline
    assert record["best"]["task_weights"] == {"vtm": 2.5, "mtm": 1.05, "mvm": 1.3}
    comparison = record["comparison"]
    assert (comparison["meltr"], comparison["baseline_value"], comparison["searched_trials"]) == (23.3, 21.7, 2)
    assert record["next"]["inspect"].endswith("train-m2/epoch_002")


def test_mtl_can_win_and_the_summary_says_so(grid):
    grid[2].metrics["val_r1"] = 20.0
    record = summary_record(grid, ["meltr.combiner", "reg_weight"], "val_r1", "max", MTL)
    assert record["best"]["trial_id"] == "m2" and record["comparison"]["baseline_value"] > record["comparison"]["meltr"]


def test_the_printed_summary_holds_the_story_whole_at_any_width(grid):
    out = io.StringIO()
    record = print_summary(Console(file=out, width=40), grid, ["meltr.combiner", "reg_weight"], "val_r1", "max",
                           baseline=MTL)
    lines = out.getvalue().splitlines()
    assert "MELTR vs MTL on val_r1: 23.3 vs 21.7 (+1.6; MELTR: best of 2 trials, MTL: 1 trial, same epochs, one seed each)" in lines
    assert "learned task weights ∂MELTR/∂ℓ_t (best MELTR trial, epoch 2): vtm 2.50 · mtm 1.05 · mvm 1.30" in lines
    checkpoint = record["best"]["checkpoint"]
    assert lines[lines.index("checkpoint of the best MELTR trial:") + 1] == checkpoint
    assert f"meltr-ray inspect {checkpoint}" in lines
    with open(f"{grid.experiment_path}/summary.json", encoding="utf-8") as f:
        assert json.load(f)["comparison"]["meltr"] == 23.3
