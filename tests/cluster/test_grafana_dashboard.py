"""The packaged Grafana dashboard charts exactly the metrics the monitor exports (no Ray cluster needed).

The metric names come from :data:`meltr_ray.cluster.monitor.METRICS` (what ``StepMonitor`` and
``SkippedRowsHook`` register); ``test_ray_dashboard.py`` checks the same names in a real Prometheus scrape.
"""
from __future__ import annotations

import fnmatch
import json
import re
try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

from meltr_ray.cluster.monitor import METRICS
from meltr_ray.dashboard import grafana_dashboard_file, install_grafana_dashboard

ROOT = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"\bray_[a-zA-Z_:][a-zA-Z0-9_:]*")
BY_LABELS = re.compile(r"\bby\s*\(([^)]*)\)")
SELECTOR_LABELS = re.compile(r"([a-zA-Z_]\w*)\s*=~?")
RAY_LABELS = {"SessionName"}                    # Ray adds it to every metric


def _dashboard() -> dict:
    return json.loads(grafana_dashboard_file().read_text(encoding="utf-8"))


def _queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' label_values queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _spec(exported: str):
    return next(s for s in METRICS.values() if s.exported_name == exported)


def test_every_panel_queries_a_metric_the_monitor_exports():
    exported = {spec.exported_name for spec in METRICS.values()}
    for expr in _queries(_dashboard()):
        names = METRIC_NAME.findall(expr)
        assert names, f"no metric in {expr!r}"
        assert set(names) <= exported, f"{expr!r} queries {set(names) - exported}, not exported by monitor.py"


def test_every_exported_metric_has_a_panel():
    charted = {name for p in _dashboard()["panels"] for t in p["targets"] for name in METRIC_NAME.findall(t["expr"])}
    assert charted == {spec.exported_name for spec in METRICS.values()}


def test_queries_use_only_labels_the_metric_carries():
    for expr in _queries(_dashboard()):
        (name,) = set(METRIC_NAME.findall(expr))
        tags = set(_spec(name).tags) | RAY_LABELS
        grouped = {label.strip() for group in BY_LABELS.findall(expr) for label in group.split(",") if label.strip()}
        selected = set(SELECTOR_LABELS.findall(expr.split("{", 1)[1])) if "{" in expr else set()
        assert grouped <= tags and selected <= tags, f"{expr!r} uses labels outside {sorted(tags)}"


def test_panels_are_well_formed_and_do_not_overlap():
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "trial"} <= variables
    cells = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_the_dashboard_is_declared_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["meltr_ray"]
    assert any(fnmatch.fnmatch("cluster/grafana/meltr_dashboard.json", p) for p in patterns)


def test_install_copies_it_next_to_rays_dashboards(tmp_path):
    with pytest.raises(FileNotFoundError, match="start the Ray cluster"):
        install_grafana_dashboard(tmp_path)
    ray_dashboards = tmp_path / "session_latest" / "metrics" / "grafana" / "dashboards"
    ray_dashboards.mkdir(parents=True)
    target = install_grafana_dashboard(tmp_path)
    assert target.parent == ray_dashboards and json.loads(target.read_text())["uid"] == _dashboard()["uid"]


class _Recorder:
    """Stands in for a Ray gauge or counter: remembers the last value and tags it got."""

    def __init__(self):
        self.calls = []

    def set(self, value, tags):
        self.calls.append((value, tags))

    inc = set


def test_step_monitor_publishes_every_step_metric_the_trainer_reports(monkeypatch):
    """Each metric a logged step carries (the bilevel trainer's names) reaches its gauge, the Neumann
    correction of the meta step included; nothing is registered with Ray (the recorders replace it)."""
    from meltr_ray.cluster import monitor
    recorders = {name: _Recorder() for name in METRICS}
    monkeypatch.setattr(monitor, "_METRICS", recorders)
    clock = iter([0.0, 2.0]).__next__
    step = monitor.StepMonitor("t1", ["vtm"], clips_per_step=4, clock=clock)
    step({"step": 3, "weight_vtm": 0.5, "loss_vtm": 1.5, "train_loss": 1.5, "meta_grad_norm": 0.25,
          "meta_neumann_correction": 0.0625})
    assert recorders["meltr_meta_neumann_correction"].calls == [(0.0625, {"trial": "t1"})]
    assert recorders["meltr_meta_grad_norm"].calls == [(0.25, {"trial": "t1"})]
    assert recorders["meltr_task_weight"].calls == [(0.5, {"trial": "t1", "task": "vtm"})]
    assert recorders["meltr_clips_per_second"].calls == [(3 * 4 / 2.0, {"trial": "t1"})]
    unset = {name for name, r in recorders.items() if not r.calls} - {"meltr_skipped_rows"}
    assert not unset, f"StepMonitor never sets {unset}"
