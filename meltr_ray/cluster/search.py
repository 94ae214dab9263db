"""Search spaces → Ray Tune: param space, searcher (HyperOpt TPE or random) and the ASHA scheduler.

The YAML format and its validation live in :mod:`meltr_ray.spaces` (no Ray there); this module only maps a
validated :class:`~meltr_ray.spaces.SearchSpace` onto Tune objects.

**A baseline trial** (the space's ``baseline``, e.g. ``{meltr.combiner: mtl}``: plain multi-task learning) is
one extra trial with the same budget: :class:`BaselineFirst` suggests it first and keeps its result from the
searcher (TPE models MELTR's hyperparameters, which the baseline does not have), and :class:`BaselineASHA`
never cuts it and leaves it out of the rungs, so the baseline runs every epoch and no MELTR trial is cut by
comparison with it. Every other trial's config carries the recipe's value of the baseline keys
(``meltr.combiner: meltr``), so the results say which is which.
"""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from ..spaces import SearchSpace, paper_point


def tune_distribution(spec: dict):
    """One Tune sampler from a validated distribution spec (``randint`` includes ``high``)."""
    kind = spec["distribution"]
    if kind == "choice":
        return tune.choice(list(spec["values"]))
    if kind == "uniform":
        return tune.uniform(spec["low"], spec["high"])
    if kind == "loguniform":
        return tune.loguniform(spec["low"], spec["high"])
    if kind == "quniform":
        return tune.quniform(spec["low"], spec["high"], spec["q"])
    if kind == "qloguniform":
        return tune.qloguniform(spec["low"], spec["high"], spec["q"])
    if kind == "randint":
        return tune.randint(int(spec["low"]), int(spec["high"]) + 1)
    raise ValueError(f"unknown distribution {kind!r}")


def param_space(space: SearchSpace) -> dict:
    """``{parameter name: Tune sampler}`` for the searched hyperparameters."""
    return {name: tune_distribution(spec) for name, spec in space.params.items()}


def tuner_param_space(space: SearchSpace) -> dict:
    """What ``tune.Tuner(param_space=...)`` gets: the space, or ``{}`` with a baseline (the searcher then holds
    the space itself: Tune would otherwise fill the baseline trial's config with MELTR's searched values)."""
    return {} if space.baseline else param_space(space)


def make_searcher(space: SearchSpace, searcher: str | None = None, seed: int = 0, max_concurrent: int = 0,
                  searched_marker: dict | None = None):
    """HyperOpt (TPE; default) or random search, seeded with the paper's setting as the first searched trial.

    With a ``space.baseline``: :class:`BaselineFirst` around a HyperOpt searcher that holds the space
    (``random`` = TPE's random start phase for every trial); ``searched_marker`` (the recipe's values of the
    baseline keys) is added to every searched trial's config.
    """
    kind = searcher or space.searcher
    if kind not in ("hyperopt", "random"):
        raise ValueError(f"searcher must be 'hyperopt' or 'random', got {kind!r}")
    points = [p] if (p := paper_point(space)) else None
    if not space.baseline:
        if kind == "random":
            return BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                         max_concurrent=max_concurrent)
        return _hyperopt(points_to_evaluate=points, random_state_seed=seed)
    from ray.tune.search.hyperopt import HyperOptSearch
    # converted here: given Tune samplers, HyperOptSearch converts them itself but warns a newcomer about it
    hyperopt_space = HyperOptSearch.convert_search_space(param_space(space))
    inner = _hyperopt(space=hyperopt_space, metric=space.metric, mode=space.mode, points_to_evaluate=points,
                      random_state_seed=seed, **({"n_initial_points": 10 ** 6} if kind == "random" else {}))
    return BaselineFirst(inner, space.baseline, searched_marker or {})


def _hyperopt(**kwargs):
    from ray.tune.search.hyperopt import HyperOptSearch
    return HyperOptSearch(**kwargs)


def make_scheduler(space: SearchSpace, epochs: int):
    """ASHA on the ``epoch`` the workers report, or FIFO (``scheduler: {type: none}``).

    ``max_t = epochs + 1``: ASHA stopping a trial at ``max_t`` kills the trial actor mid-way and the Train run
    would end ABORTED; one epoch of head-room lets finished runs end FINISHED with the same rungs.
    """
    options = dict(space.scheduler)
    if options.pop("type", "asha") == "none":
        return FIFOScheduler()
    max_t = int(options.pop("max_t", epochs)) + 1
    grace = max(1, min(int(options.pop("grace_period", 1)), epochs))
    return BaselineASHA(space.baseline, time_attr="epoch", max_t=max_t, grace_period=grace,
                        reduction_factor=options.pop("reduction_factor", 2))


def is_baseline(config: dict, baseline: dict) -> bool:
    """Whether a trial's ``config`` is the baseline's (every baseline key at the baseline's value)."""
    return bool(baseline) and all(config.get(k) == v for k, v in baseline.items())


class BaselineFirst(Searcher):
    """Suggest the ``baseline`` config first, then the wrapped searcher's configs (each with ``marker`` added).

    The baseline's results never reach the wrapped searcher. ``Tuner.restore`` keeps which trial was the
    baseline (:meth:`get_state`) and the wrapped searcher's own state.
    """

    def __init__(self, searcher: Searcher, baseline: dict, marker: dict):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.baseline, self.marker = searcher, dict(baseline), dict(marker)
        self.baseline_trial: str | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        if self.baseline_trial is None:
            self.baseline_trial = trial_id
            return dict(self.baseline)
        config = self.searcher.suggest(trial_id)
        return {**self.marker, **config} if isinstance(config, dict) else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.baseline_trial:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id != self.baseline_trial:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves a wrapper (anything with a ``.searcher``) by get_state/set_state and the innermost searcher
    # by save/restore, as for its own ConcurrencyLimiter
    def get_state(self) -> dict:
        return {"baseline": self.baseline, "marker": self.marker, "baseline_trial": self.baseline_trial}

    def set_state(self, state: dict) -> None:
        self.baseline, self.marker = state["baseline"], state["marker"]
        self.baseline_trial = state["baseline_trial"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class BaselineASHA(ASHAScheduler):
    """ASHA that never cuts the baseline trial and keeps it out of the rungs (it runs the full budget, and
    MELTR trials are ranked against each other only)."""

    def __init__(self, baseline: dict, **kwargs):
        super().__init__(**kwargs)
        self.baseline = dict(baseline)

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_baseline(trial.config, self.baseline):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id not in self._trial_info:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)
