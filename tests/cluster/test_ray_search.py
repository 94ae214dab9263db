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
    assert set(samplers) == {"reg_weight", "backbone_lr", "meltr_lr", "neumann_steps", "meta_every", "meta.neumann_lr"}
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


def test_live_table_survives_pickling_after_rendering():
    import io
    import pickle
    from types import SimpleNamespace

    from rich.console import Console

    from meltr_ray.cluster.progress import LiveTrialTable
    table = LiveTrialTable("val_r1", "max", ["reg_weight", "neumann_steps"], epochs=3)
    trial = SimpleNamespace(trial_id="t1", config={"reg_weight": 0.3, "neumann_steps": 3})
    table.on_trial_result(0, [], trial, {"epoch": 1, "val_r1": 10.0})
    table.on_trial_complete(0, [], trial)
    copy = pickle.loads(pickle.dumps(table))                   # Tune stores callbacks with the experiment
    assert copy.rows["t1"]["status"] == "ASHA stop" and copy._live is None
    table.on_experiment_end([])
    out = io.StringIO()
    Console(file=out, width=120).print(copy.table())
    assert "t1" in out.getvalue() and "10" in out.getvalue()


def test_node_capacities_read_the_autoscaler_config_on_a_head_node(monkeypatch):
    import os

    from meltr_ray.cluster import preflight
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setattr(preflight, "BOOTSTRAP_CONFIG", preflight.Path(root) / "cluster.yaml")
    nodes = preflight.node_capacities()
    assert nodes.count({"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}) == 4
    assert {"CPU": 0, "train_driver": 16} in nodes
