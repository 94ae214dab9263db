"""A rich live table of trials while Tune runs, and the summary of the search afterwards (printed with whole
paths, and written as ``summary.json`` into the experiment folder)."""
from __future__ import annotations

import json
import math
import os
import shlex

from ray import tune

HPARAM_LABELS = {"reg_weight": "γ reg_weight", "backbone_lr": "α backbone_lr", "meltr_lr": "β meltr_lr",
                 "neumann_steps": "K neumann_steps", "meta_every": "meta_every"}
SHORT_LABELS = {"reg_weight": "γ", "backbone_lr": "α", "meltr_lr": "β", "neumann_steps": "K", "meta_every": "every"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


class LiveTrialTable(tune.Callback):
    """A Tune callback rendering one row per trial: status, sampled hyperparameters, epoch, metric.

    The rich ``Live`` display is created lazily and dropped when pickled (Tune stores callbacks with the
    experiment), so the callback survives ``Tuner.restore``.
    """

    def __init__(self, metric: str, mode: str, params, epochs: int, title: str = "MELTR search"):
        self.metric, self.mode, self.params, self.title = metric, mode, list(params), title
        self.epochs = epochs
        self.rows: dict = {}
        self._live = None

    def __getstate__(self):
        return {**self.__dict__, "_live": None}

    def _update(self, trial, status: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"status": status, "config": dict(trial.config)})
        row["status"] = status
        if result:
            row["epoch"] = result.get("epoch", row.get("epoch"))
            row["metric"] = result.get(self.metric, row.get("metric"))
        self._render()

    def table(self):
        from rich.table import Table
        table = Table(title=self.title, caption="γ reg_weight · α backbone_lr · β meltr_lr · K neumann_steps")
        for header in ["trial", "status", *(SHORT_LABELS.get(p, p) for p in self.params), "epoch", self.metric]:
            table.add_column(header, no_wrap=True)
        best = self._best_trial()
        for trial_id, row in self.rows.items():
            cells = [trial_id, row["status"], *(_fmt(row["config"].get(p)) for p in self.params),
                     _fmt(row.get("epoch")), _fmt(row.get("metric"))]
            table.add_row(*cells, style="bold green" if trial_id == best else None)
        return table

    def _best_trial(self):
        scored = [(r["metric"], t) for t, r in self.rows.items() if isinstance(r.get("metric"), (int, float))]
        if not scored:
            return None
        return (max(scored) if self.mode == "max" else min(scored))[1]

    def _render(self) -> None:
        from rich.live import Live
        if self._live is None:
            self._live = Live(self.table(), refresh_per_second=2, transient=False)
            self._live.start()
        else:
            self._live.update(self.table())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = self.rows.get(trial.trial_id, {}).get("epoch")
        self._update(trial, "DONE" if epoch is None or epoch >= self.epochs else "ASHA stop")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.stop()
            self._live = None


# ---- the summary after the search -------------------------------------------------------------------------------
SUMMARY_FILE = "summary.json"
SUMMARY_METRIC_KEYS = ("epoch", "train_loss", "meta_grad_norm")


def _shown_metric(key: str) -> bool:
    return key.startswith(("val_", "loss_", "weight_")) or key in SUMMARY_METRIC_KEYS


def _plain(value):
    """JSON-safe: NumPy scalars become Python numbers, NaN/inf become null, the rest of the odd types text."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _trial_record(result, params, metric: str) -> dict:
    metrics = result.metrics or {}
    return {"trial_id": metrics.get("trial_id"), "config": {p: result.config.get(p) for p in params},
            metric: metrics.get(metric), "epoch": metrics.get("epoch"), "checkpoint": metrics.get("checkpoint_path"),
            "error": None if result.error is None else str(result.error).splitlines()[0]}


def summary_record(results, params, metric: str) -> dict:
    """What the search found, as plain data (also written to ``<experiment>/summary.json``): the best trial's
    hyperparameters, metrics and checkpoint, every trial's score, and the commands to run next."""
    best = results.get_best_result()
    experiment = str(results.experiment_path)
    checkpoint = (best.metrics or {}).get("checkpoint_path")
    record = {
        "metric": metric, "experiment": experiment,
        "best": {**_trial_record(best, params, metric),
                 "metrics": {k: v for k, v in sorted((best.metrics or {}).items()) if _shown_metric(k)}},
        "trials": [_trial_record(result, params, metric) for result in results],
        "next": {"dashboard": f"meltr-ray dashboard {shlex.quote(experiment)}"},
    }
    if checkpoint:
        record["next"]["inspect"] = f"meltr-ray inspect {shlex.quote(str(checkpoint))}"
    return _plain(record)


def write_summary(record: dict, experiment: str | None = None) -> str:
    """Write ``record`` as ``<experiment>/summary.json`` (a local folder or a ``scheme://`` URI); returns its path."""
    import pyarrow.fs
    experiment = (experiment or record["experiment"]).rstrip("/")
    if "://" in experiment:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), os.path.abspath(experiment)
    with fs.open_output_stream(f"{root}/{SUMMARY_FILE}") as stream:
        stream.write((json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())
    return f"{experiment if '://' in experiment else root}/{SUMMARY_FILE}"


def summary_table(record: dict, params):
    """A rich table of the best trial: its hyperparameters (paper symbols) and metrics. Paths are not in it:
    :func:`print_locations` prints them whole."""
    from rich.table import Table
    best = record["best"]
    table = Table(title=f"best trial by {record['metric']}", show_header=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("trial", _fmt(best["trial_id"]))
    for p in params:
        table.add_row(HPARAM_LABELS.get(p, p), _fmt(best["config"].get(p)))
    for key, value in best["metrics"].items():
        table.add_row(key, _fmt(value))
    return table


def print_locations(console, rows) -> None:
    """``(label, path or command)`` rows, each value whole on a line of its own: no wrapping, no ellipsis, so
    it can be copied from a terminal of any width or from piped output."""
    for label, value in rows:
        if value:
            console.print(f"{label}:", highlight=False)
            console.print(str(value), soft_wrap=True, markup=False, highlight=False)


def print_summary(console, results, params, metric: str) -> dict:
    """Print the best trial's table, then where things are and what to run next (whole paths), and write
    ``summary.json`` into the experiment folder. Returns the record."""
    record = summary_record(results, params, metric)
    written = write_summary(record)
    console.print(summary_table(record, params))
    print_locations(console, [
        ("checkpoint of the best trial", record["best"]["checkpoint"]), ("experiment", record["experiment"]),
        ("summary", written), ("what MELTR learned (plots)", record["next"].get("inspect")),
        ("the curves again (TensorBoard)", record["next"]["dashboard"])])
    return record
