"""The driver's default data factory (``shard_data``) hands ``build_datasets`` what the run's spec and config
say — checked without a Ray cluster, with ``build_datasets`` replaced by a recorder."""
from __future__ import annotations

import pytest

from meltr_ray.backbones import get_spec
from meltr_ray.cluster import data as cluster_data
from meltr_ray.cluster import driver
from meltr_ray.cluster.driver import feature_frames, shard_data
from meltr_ray.config import JobConfig
from meltr_ray.run import resolve_job


def _job(tmp_path, backbone: str, task: str, **overrides) -> JobConfig:
    return resolve_job(JobConfig().with_overrides({"backbone.name": backbone, "backbone.task": task,
                                                   "data.path": str(tmp_path), **overrides}))


@pytest.fixture
def recorded(monkeypatch):
    """The keyword arguments of every ``build_datasets`` call; it returns a train split so shard_data goes on."""
    calls = []

    def record(shard_dir, **kwargs):
        calls.append(kwargs)
        return {split: object() for split in kwargs["splits"]}
    monkeypatch.setattr(cluster_data, "build_datasets", record)
    # the folder holds no shards: the step count (read from its dataset.json) is not what is tested here
    monkeypatch.setattr(driver, "shard_steps_per_epoch", lambda cfg: None)
    return calls


@pytest.mark.parametrize("frames", [None, 20, 64])
def test_feature_rows_get_the_configs_frame_count_not_the_data_layers_48(tmp_path, recorded, frames):
    extra = {"data.num_frames": frames} if frames else {}
    cfg = _job(tmp_path, "univl_tiny", "retrieval", **extra)
    shard_data(cfg, "trial-1")
    expected = frames or get_spec("univl_tiny").tasks["retrieval"].data.num_frames
    assert recorded[0]["max_feature_frames"] == expected == feature_frames(cfg)


def test_a_frame_count_above_the_models_positions_is_refused_before_any_data(tmp_path):
    with pytest.raises(ValueError, match="data.num_frames = 65 is above the model's maximum 64"):
        _job(tmp_path, "univl_tiny", "retrieval", **{"data.num_frames": 65})


def test_an_unresolved_config_falls_back_to_the_specs_frames(tmp_path, recorded):
    cfg = JobConfig().with_overrides({"backbone.name": "univl_tiny", "backbone.task": "sentiment",
                                      "data.path": str(tmp_path)})
    assert cfg.data.num_frames is None
    shard_data(cfg, "trial-2")
    assert recorded[0]["max_feature_frames"] == get_spec("univl_tiny").tasks["sentiment"].data.num_frames
