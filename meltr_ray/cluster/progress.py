"""A rich live table of trials while Tune runs, and the summary of the best trial afterwards."""
from __future__ import annotations

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


def summary(results, params, metric: str, dashboard_url: str | None = None):
    """A rich table of the best trial: its hyperparameters (paper symbols), its metrics, where things are."""
    from rich.table import Table
    best = results.get_best_result()
    table = Table(title=f"best trial by {metric}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for p in params:
        table.add_row(HPARAM_LABELS.get(p, p), _fmt(best.config.get(p)))
    for key, value in sorted((best.metrics or {}).items()):
        if key.startswith(("val_", "loss_", "weight_")) or key in ("epoch", "train_loss", "meta_grad_norm"):
            table.add_row(key, _fmt(value))
    if best.metrics and best.metrics.get("checkpoint_path"):
        table.add_row("checkpoint", str(best.metrics["checkpoint_path"]))
    table.add_row("experiment", str(results.experiment_path))
    if dashboard_url:
        table.add_row("dashboard", dashboard_url)
    return table
