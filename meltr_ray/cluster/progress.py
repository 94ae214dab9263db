"""A rich live table of trials while Tune runs, and the summary of the search afterwards (printed with whole
paths, and written as ``summary.json`` into the experiment folder)."""
from __future__ import annotations

import json
import math
import os
import shlex

from ray import tune

from ..config import HYPERPARAMETERS
from .search import is_baseline

# labels of the searched hyperparameters, from the one table in config.py (by alias and by dotted path)
HPARAM_LABELS = {key: f"{h.symbol} {h.alias}" for h in HYPERPARAMETERS for key in (h.alias, h.path)}
SHORT_LABELS = {key: h.symbol for h in HYPERPARAMETERS for key in (h.alias, h.path)}
SHORT_LABELS["meltr.combiner"] = "combiner"                # the baseline's key (MTL or MELTR)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def wide_console(**kwargs):
    """A rich console; when the output is not a terminal (piped, a log file, a notebook cell) at least 160
    columns wide, so tables keep their values instead of squeezing them into "…" at rich's default 80."""
    from rich.console import Console
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=max(console.width, 160), **kwargs)


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
        table = Table(title=self.title, caption=" · ".join(HPARAM_LABELS[p] for p in self.params if p in HPARAM_LABELS))
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
            self._live = Live(self.table(), refresh_per_second=2, transient=False, console=wide_console())
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


def baseline_label(baseline: dict) -> str:
    """``MTL`` for the plain multi-task baseline, else its settings (``meltr.combiner=fixed``)."""
    if baseline == {"meltr.combiner": "mtl"}:
        return "MTL"
    return ", ".join(f"{k}={v}" for k, v in baseline.items())


def _scored(results, metric: str) -> list:
    return [r for r in results if r.error is None and isinstance((r.metrics or {}).get(metric), (int, float))]


def best_searched(results, metric: str, mode: str, baseline: dict):
    """The best trial that is not the baseline (by the last reported ``metric``), or ``None``."""
    searched = [r for r in _scored(results, metric) if not is_baseline(r.config, baseline)]
    if not searched:
        return None
    pick = max if mode == "max" else min
    return pick(searched, key=lambda r: r.metrics[metric])


def task_weights(metrics: dict) -> dict:
    """``{task: ∂MELTR/∂ℓ_t}`` from a trial's last report (``weight_<task>``: the mean over its logged steps)."""
    return {k[len("weight_"):]: v for k, v in metrics.items() if k.startswith("weight_")}   # in task order


def comparison_record(results, params, metric: str, best, baseline: dict) -> dict | None:
    """The best searched trial against the baseline trial on ``metric`` (``None`` without a baseline)."""
    if not baseline:
        return None
    runs = [r for r in results if is_baseline(r.config, baseline)]
    searched = [r for r in results if not is_baseline(r.config, baseline)]
    base = _trial_record(runs[0], params, metric) if runs else None
    return {"metric": metric, "baseline": baseline_label(baseline), "baseline_settings": dict(baseline),
            "meltr": None if best is None else (best.metrics or {}).get(metric),
            "baseline_value": None if base is None else base[metric], "searched_trials": len(searched),
            "baseline_trial": base}


def summary_record(results, params, metric: str, mode: str = "max", baseline: dict | None = None) -> dict:
    """What the search found, as plain data (also written to ``<experiment>/summary.json``): the best trial's
    hyperparameters, metrics, learned task weights and checkpoint, the best MELTR trial against the baseline
    (plain MTL) on ``metric``, every trial's score, and the commands to run next. With a ``baseline``, "best"
    is the best trial that is *not* the baseline (the MELTR trial whose weights ``meltr-ray inspect`` plots)."""
    baseline = baseline or {}
    best = best_searched(results, metric, mode, baseline) if baseline else results.get_best_result()
    experiment = str(results.experiment_path)
    record = {"metric": metric, "mode": mode, "experiment": experiment, "best": None,
              "comparison": comparison_record(results, params, metric, best, baseline),
              "trials": [_trial_record(result, params, metric) for result in results],
              "next": {"dashboard": f"meltr-ray dashboard {shlex.quote(experiment)}"}}
    if best is not None:
        metrics = best.metrics or {}
        record["best"] = {**_trial_record(best, params, metric), "task_weights": task_weights(metrics),
                          "metrics": {k: v for k, v in sorted(metrics.items()) if _shown_metric(k)}}
        if metrics.get("checkpoint_path"):
            record["next"]["inspect"] = f"meltr-ray inspect {shlex.quote(str(metrics['checkpoint_path']))}"
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
    which = "MELTR trial" if record.get("comparison") else "trial"
    table = Table(title=f"best {which} by {record['metric']}", show_header=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("trial", _fmt(best["trial_id"]))
    for p in params:
        table.add_row(HPARAM_LABELS.get(p, p), _fmt(best["config"].get(p)))
    for key, value in best["metrics"].items():
        table.add_row(key, _fmt(value))
    return table


def comparison_lines(record: dict) -> list[str]:
    """The story in two lines: MELTR's best against the baseline on the metric, and what MELTR learned."""
    lines = []
    comparison, best = record.get("comparison"), record.get("best")
    if comparison:
        metric, label = comparison["metric"], comparison["baseline"]
        meltr, base = comparison["meltr"], comparison["baseline_value"]
        n = comparison["searched_trials"]
        if meltr is None or base is None:
            missing = "MELTR" if meltr is None else label
            lines.append(f"MELTR vs {label} on {metric}: no result for {missing} (see the failed trials above)")
        else:
            lines.append(f"MELTR vs {label} on {metric}: {meltr:.1f} vs {base:.1f} ({meltr - base:+.1f}; "
                         f"MELTR: best of {n} trials, {label}: 1 trial, same epochs, one seed each)")
    if best and best.get("task_weights"):
        weights = " · ".join(f"{task} {value:.2f}" for task, value in best["task_weights"].items())
        lines.append(f"learned task weights ∂MELTR/∂ℓ_t (best MELTR trial, epoch {_fmt(best['epoch'])}): "
                     f"{weights}")
    return lines


def print_locations(console, rows) -> None:
    """``(label, path or command)`` rows, each value whole on a line of its own: no wrapping, no ellipsis, so
    it can be copied from a terminal of any width or from piped output."""
    for label, value in rows:
        if value:
            console.print(f"{label}:", highlight=False)
            console.print(str(value), soft_wrap=True, markup=False, highlight=False)


def print_summary(console, results, params, metric: str, mode: str = "max", baseline: dict | None = None) -> dict:
    """Print the best trial's table, MELTR against the baseline and the learned task weights, then where things
    are and what to run next (whole paths), and write ``summary.json`` into the experiment folder. Returns the
    record."""
    record = summary_record(results, params, metric, mode, baseline)
    written = write_summary(record)
    if record["best"] is not None:
        console.print(summary_table(record, params))
    for line in comparison_lines(record):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    best = record["best"] or {}
    print_locations(console, [
        ("checkpoint of the best MELTR trial" if baseline else "checkpoint of the best trial", best.get("checkpoint")),
        ("experiment", record["experiment"]), ("summary", written),
        ("what MELTR learned (plots)", record["next"].get("inspect")),
        ("the curves again (TensorBoard)", record["next"]["dashboard"])])
    return record
