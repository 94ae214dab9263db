"""The per-worker train function under Train V2 local mode (``num_workers=0``): no cluster, one process."""
from __future__ import annotations

from meltr_ray.cluster.driver import build_torch_trainer
from meltr_ray.config import JobConfig
from tests.cluster._common import PLUGINS, TOY_FACTORY, toy_overrides


def test_worker_function_runs_in_local_mode(tmp_path):
    import tests.cluster.ray_plugins  # noqa: F401  (registers the toy backbone here too)
    cfg = JobConfig().with_overrides({"backbone.name": "toy_ray", "backbone.task": "toy", "train.epochs": 2,
                                      **toy_overrides(**{"cluster.num_workers": 0})})
    trainer = build_torch_trainer(cfg, {"plugins": PLUGINS, "data_factory": TOY_FACTORY}, name="local",
                                  storage_path=str(tmp_path))
    result = trainer.fit()
    assert result.error is None
    assert result.return_value["epoch"] == 2 and result.return_value["step"] == 8
    assert {"weight_primary", "meta_grad_norm", "val_primary_mse"} <= set(result.return_value)
