"""Subprocess for the driver-crash test: a 2-trial toy search on the session's cluster (``RAY_ADDRESS``),
one trial at a time, whose ``tuner.fit()`` process SIGKILLs itself at the second trial's first result.

Usage: ``python -m tests.cluster.tune_driver_crash TMP_DIR`` (from the repository root).
"""
import os
import sys

import ray

from meltr_ray import api
from tests.cluster._common import toy_tune_kwargs
from tests.cluster.ray_plugins import KillDriverOnResult
from tests.cluster.test_ray_tune import TOY_SPACE


def main(tmp: str) -> None:
    ray.init(address=os.environ["RAY_ADDRESS"])
    kwargs = toy_tune_kwargs(_Path(tmp), TOY_SPACE, **{
        "cluster.num_workers": 1, "cluster.max_concurrent_trials": 1,
        "backbone.overrides": {"epoch_log": os.path.join(tmp, "epochs.log")}})
    api.tune(name="driver-crash", space=TOY_SPACE, num_samples=2, epochs=2, searcher="random", progress=False,
             callbacks=[KillDriverOnResult(os.path.join(tmp, "driver_killed"), nth=2)], **kwargs)


class _Path(str):
    def __truediv__(self, other):
        return _Path(os.path.join(self, other))


if __name__ == "__main__":
    main(sys.argv[1])
