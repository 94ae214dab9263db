"""The fixture plugin family through Ray: ``meltr_ray.train(..., plugins=[...])`` imports it by name on two
Train workers, whose ``build_run`` builds it from its spec; it trains (DDP), evaluates and checkpoints."""
from __future__ import annotations

import pytest

from meltr_ray import api
from meltr_ray.core.checkpoint import load_checkpoint

from tests.cluster._common import toy_overrides
from tests.cluster.ray_plugins import STEPS_PER_EPOCH

pytestmark = pytest.mark.ray

PLUGINS = ["tests.fixtures.plugin_family", "tests.cluster.ray_plugins"]


def test_plugin_family_trains_on_two_ray_workers(ray_cluster, tmp_path):
    result = api.train(backbone="featlm_tiny", task="retrieval", plugins=PLUGINS, epochs=1, name="featlm",
                       data_factory="tests.cluster.ray_plugins:featlm_data", storage_path=str(tmp_path / "results"),
                       overrides=toy_overrides(**{"train.batch_size": 4, "meta.meta_every": 1}))
    assert result.error is None
    assert (result.metrics["epoch"], result.metrics["step"]) == (1, STEPS_PER_EPOCH)
    assert {"loss_nce", "loss_mlm", "loss_mfr", "meta_grad_norm", "val_r1", "val_medr"} <= set(result.metrics)
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    assert state["task_names"] == ["nce", "mlm", "mfr"]
    assert state["counters"]["meta_steps"] == STEPS_PER_EPOCH and state["counters"]["skipped_meta"] == 0
    assert state["config"]["data"]["num_frames"] == 4                    # filled from the plugin's spec
