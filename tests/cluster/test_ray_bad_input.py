"""Bad input fails with an error naming the problem before any trial starts."""
from __future__ import annotations

import pytest
import yaml

from meltr_ray import api
from meltr_ray.config import JobConfig
from meltr_ray.spaces import SpaceError
from tests.cluster._common import toy_kwargs, toy_tune_kwargs


def _no_experiment_started(tmp_path):
    results = tmp_path / "results"
    return not results.exists() or not [p for p in results.iterdir() if not p.name.startswith(".")]


def test_unknown_backbone(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'nosuchnet_base'"):
        api.tune(**{**toy_tune_kwargs(tmp_path), "backbone": "nosuchnet"})
    assert _no_experiment_started(tmp_path)


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match=r"task 'captioning' \(backbone.task\)"):
        api.tune(**{**toy_tune_kwargs(tmp_path), "task": "captioning"})


@pytest.mark.parametrize("params, key", [
    ({"reg_weight": {"distribution": "uniform", "low": 0.5, "high": 0.5}}, "params.reg_weight"),
    ({"gamma": {"distribution": "uniform", "low": 0.1, "high": 0.5}}, "params.gamma"),
])
def test_bad_space_file(tmp_path, params, key):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"metric": "val_primary_mse", "mode": "min", "params": params}))
    with pytest.raises(SpaceError, match=key):
        api.tune(space=str(path), **toy_kwargs(tmp_path))
    assert _no_experiment_started(tmp_path)


def test_data_path_without_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    kwargs = {**toy_tune_kwargs(tmp_path), "data_factory": None, "data": str(tmp_path / "empty")}
    with pytest.raises(ValueError, match="holds no Parquet shards"):
        api.tune(**kwargs)
    with pytest.raises(ValueError, match="is not a directory"):
        api.train(**{**kwargs, "data": str(tmp_path / "missing")})


def test_storage_path_that_cannot_be_written(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    kwargs = {**toy_tune_kwargs(tmp_path), "storage_path": str(tmp_path / "a_file" / "results")}
    with pytest.raises(ValueError, match=r"storage path .* cannot be written"):
        api.tune(**kwargs)


@pytest.mark.ray
def test_more_gpus_per_trial_than_any_node_has(ray_cluster, tmp_path):
    kwargs = toy_tune_kwargs(tmp_path, **{"cluster.use_gpu": True, "cluster.num_workers": 8})
    with pytest.raises(ValueError, match=r"GPU=1.0 but the largest node has 0"):
        api.tune(**kwargs)
    with pytest.raises(ValueError, match="GPU"):
        api.train(**kwargs)
    assert _no_experiment_started(tmp_path)


def test_resource_rules_on_a_p4d_cluster():
    from meltr_ray.cluster.driver import worker_resources
    from meltr_ray.cluster.preflight import check_resources, concurrent_trials
    nodes = [{"CPU": 0, "train_driver": 16}] + [{"CPU": 96, "GPU": 8}] * 4
    cfg = JobConfig()                                    # 8 GPU workers × 8 CPUs per trial
    check_resources(cfg, worker_resources(cfg), nodes)
    assert concurrent_trials(cfg, worker_resources(cfg), nodes) == 4
    wide = cfg.with_overrides({"cluster.num_workers": 16})
    with pytest.raises(ValueError, match=r"a trial needs 16 GPUs \(16 workers × 1\) but the largest node has 8"):
        check_resources(wide, worker_resources(wide), nodes)
    greedy = cfg.with_overrides({"cluster.cpus_per_worker": 128.0})
    with pytest.raises(ValueError, match="CPU=128.0 but the largest node has 96"):
        check_resources(greedy, worker_resources(greedy), nodes)
