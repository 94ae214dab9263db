"""Search spaces → Tune objects (no cluster needed)."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.hyperopt import HyperOptSearch

from meltr_ray.cluster.search import make_scheduler, make_searcher, param_space
from meltr_ray.spaces import load_space, parse_space


def test_param_space_maps_each_distribution():
    space = load_space("default")
    samplers = param_space(space)
    assert set(samplers) == {"reg_weight", "backbone_lr", "meltr_lr", "neumann_steps", "meta_every"}
    assert isinstance(samplers["reg_weight"], tune.search.sample.Float)
    k = samplers["neumann_steps"]
    assert isinstance(k, tune.search.sample.Integer) and (k.lower, k.upper) == (1, 6)   # randint high included
    assert samplers["meta_every"].categories == [3, 5]


def test_searchers_and_asha():
    space = load_space("default")
    assert isinstance(make_searcher(space), HyperOptSearch)
    random = make_searcher(space, "random")
    assert isinstance(random, BasicVariantGenerator)
    asha = make_scheduler(space, epochs=4)
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch" and asha._max_t == 5          # epochs + 1: finished runs end FINISHED
    none = parse_space({"metric": "m", "mode": "min", "scheduler": {"type": "none"},
                        "params": {"reg_weight": {"distribution": "choice", "values": [1.0]}}})
    assert isinstance(make_scheduler(none, epochs=4), FIFOScheduler)
