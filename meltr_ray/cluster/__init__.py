"""The Ray layer: the only package of meltr_ray that imports ``ray``.

* ``data.py``    Ray Data pipeline: Parquet shards → decoded frames → Train workers
* ``worker.py``  the per-worker train function (JobConfig → backbone → MELTR → DDP → ``loop.fit``)
* ``driver.py``  the Tune trial driver that builds and fits one ``TorchTrainer`` per trial
* ``search.py``  search spaces (``tune_spaces/*.yaml``) → Tune param space, HyperOpt / random, ASHA
* ``tuner.py``   the ``Tuner``: resources, concurrency, failure handling, ``Tuner.restore``
* ``monitor.py`` ``ray.util.metrics`` gauges and counters for the dashboard
* ``preflight.py`` checks that fail fast before any trial starts (backbone/task, shards, storage, resources)
* ``progress.py`` the rich live table of trials and the best-trial summary
* ``session.py`` join the cluster the user names, else start a private local one on 127.0.0.1 that avoids the
  known traps; start-up failures as one paragraph

Nothing here is imported by ``import meltr_ray``; :mod:`meltr_ray.api` imports it inside its functions.
"""
