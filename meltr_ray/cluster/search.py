"""Search spaces → Ray Tune: param space, searcher (HyperOpt TPE or random) and the ASHA scheduler.

The YAML format and its validation live in :mod:`meltr_ray.spaces` (no Ray there); this module only maps a
validated :class:`~meltr_ray.spaces.SearchSpace` onto Tune objects.
"""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
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


def make_searcher(space: SearchSpace, searcher: str | None = None, seed: int = 0, max_concurrent: int = 0):
    """HyperOpt (TPE; default) or random search, seeded with the paper's setting as the first trial."""
    kind = searcher or space.searcher
    points = [p] if (p := paper_point(space)) else None
    if kind == "random":
        return BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                     max_concurrent=max_concurrent)
    if kind != "hyperopt":
        raise ValueError(f"searcher must be 'hyperopt' or 'random', got {kind!r}")
    from ray.tune.search.hyperopt import HyperOptSearch
    return HyperOptSearch(points_to_evaluate=points, random_state_seed=seed)


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
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace,
                         reduction_factor=options.pop("reduction_factor", 2))
