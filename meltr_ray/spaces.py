"""Search-space files (``meltr_ray/tune_spaces/*.yaml``): load, validate, find the one for a backbone and task.

The shipped files are package data, found through :mod:`importlib.resources`, so a plain wheel
(``pip install .``, a cluster image) carries them; the repository's top-level ``tune_spaces`` links there.

A space file says only what is searched and how results are ranked; everything else comes from the recipe.
The format (``tune_spaces/README.md``)::

    metric: val_r1            # a key the workers report (val_<metric> from the backbone's evaluate)
    mode: max                 # max | min
    searcher: hyperopt        # hyperopt (TPE) | random
    num_samples: 16           # trials
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}    # asha | none
    params:
      reg_weight:    {distribution: loguniform, low: 0.05, high: 10}   # γ
      backbone_lr:   {distribution: loguniform, low: 1e-5, high: 1e-4} # α
      meltr_lr:      {distribution: loguniform, low: 3e-5, high: 1e-3} # β
      neumann_steps: {distribution: randint, low: 1, high: 5}          # K, both ends included
      meta_every:    {distribution: choice, values: [3, 5]}
    baseline: {meltr.combiner: mtl}   # optional: one extra trial with these settings, run first, never cut

Parameter names are the short aliases of :data:`meltr_ray.config.FIELD_ALIASES` or any dotted config path.
Every error is a :class:`SpaceError` (a ``ValueError``) that names the file and the bad key. This module does
not import Ray: :mod:`meltr_ray.cluster.search` turns a validated :class:`SearchSpace` into Tune objects.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .config import FIELD_ALIASES, HYPERPARAMETERS, JobConfig

SPACES_PACKAGE, SPACES_FOLDER = "meltr_ray", "tune_spaces"

TOP_KEYS = {"description", "metric", "mode", "searcher", "num_samples", "scheduler", "params", "baseline"}
SEARCHERS = {"hyperopt", "random"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}
# distribution -> (required keys, optional keys)
DISTRIBUTIONS = {
    "choice": ({"values"}, set()),
    "uniform": ({"low", "high"}, set()),
    "loguniform": ({"low", "high"}, set()),
    "quniform": ({"low", "high", "q"}, set()),
    "qloguniform": ({"low", "high", "q"}, set()),
    "randint": ({"low", "high"}, set()),
}


class SpaceError(ValueError):
    """A search-space file is wrong; the message names the file and the key."""


@dataclass
class SearchSpace:
    """A validated search space. ``params`` maps a parameter name (alias or dotted path) to its distribution."""
    metric: str
    mode: str
    params: dict
    searcher: str = "hyperopt"
    num_samples: int = 8
    scheduler: dict = field(default_factory=lambda: {"type": "asha", "grace_period": 1, "reduction_factor": 2})
    description: str = ""
    source: str = "<dict>"
    # one extra trial, e.g. {"meltr.combiner": "mtl"}: the recipe with these settings and no searched value
    baseline: dict = field(default_factory=dict)

    @property
    def trial_keys(self) -> list[str]:
        """What a trial's config may hold: the baseline's keys (every trial says its value), then the params."""
        return [*self.baseline, *(p for p in self.params if p not in self.baseline)]

    def contains(self, name: str, value) -> bool:
        """Whether ``value`` lies inside the range (or choice list) searched for ``name`` (alias or path)."""
        paths = {FIELD_ALIASES.get(n, n): n for n in self.params}
        spec = self.params[name] if name in self.params else self.params[paths[FIELD_ALIASES.get(name, name)]]
        if spec["distribution"] == "choice":
            return value in spec["values"]
        return spec["low"] <= value <= spec["high"]

    def without(self, names) -> "SearchSpace":
        """A copy that no longer searches ``names`` (parameter names as written in the space)."""
        return dataclasses.replace(self, params={k: v for k, v in self.params.items() if k not in set(names)})


def shipped_spaces():
    """The folder of shipped space files (an :mod:`importlib.resources` traversable: a wheel, a zip, a checkout)."""
    return resources.files(SPACES_PACKAGE).joinpath(SPACES_FOLDER)


def _shipped(name: str):
    """The shipped file ``<name>.yaml``, or ``None``."""
    entry = shipped_spaces().joinpath(f"{name}.yaml")
    return entry if entry.is_file() else None


def _fail(source: str, key: str, message: str):
    raise SpaceError(f"search space {source}: {key}: {message}")


def _check_number(source: str, key: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(source, key, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        _fail(source, key, f"must be > 0, got {value!r}")
    return value


def _param_path(source: str, name: str) -> str:
    """The dotted config path of a parameter name, checked against :class:`JobConfig`."""
    dotted = FIELD_ALIASES.get(name, name)
    try:
        JobConfig().with_overrides({dotted: None})
    except ValueError:
        _fail(source, f"params.{name}", f"unknown hyperparameter (use one of {sorted(FIELD_ALIASES)} "
                                        f"or a dotted config path such as 'meta.reg_weight')")
    return dotted


def _check_distribution(source: str, name: str, spec) -> dict:
    key = f"params.{name}"
    if not isinstance(spec, dict):
        _fail(source, key, f"must be a mapping with a 'distribution', got {spec!r}")
    kind = spec.get("distribution")
    if kind not in DISTRIBUTIONS:
        _fail(source, f"{key}.distribution", f"must be one of {sorted(DISTRIBUTIONS)}, got {kind!r}")
    required, optional = DISTRIBUTIONS[kind]
    for extra in sorted(set(spec) - required - optional - {"distribution"}):
        _fail(source, f"{key}.{extra}", f"unknown key for distribution {kind!r} (expected {sorted(required)})")
    for missing in sorted(required - set(spec)):
        _fail(source, f"{key}.{missing}", f"missing (distribution {kind!r} needs {sorted(required)})")
    if kind == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            _fail(source, f"{key}.values", f"must be a non-empty list, got {spec['values']!r}")
        return dict(spec)
    low = _check_number(source, f"{key}.low", spec["low"], positive="log" in kind)
    high = _check_number(source, f"{key}.high", spec["high"], positive="log" in kind)
    if high < low or (high == low and kind != "randint"):
        _fail(source, key, f"empty range: low={low!r} must be < high={high!r}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        _fail(source, key, f"randint bounds must be integers, got low={low!r} high={high!r}")
    if "q" in spec:
        _check_number(source, f"{key}.q", spec["q"], positive=True)
    return dict(spec)


def _check_values_fit_config(source: str, dotted: str, name: str, spec: dict) -> None:
    """Every end of the range must make a valid JobConfig (e.g. no negative learning rate)."""
    ends = spec["values"] if spec["distribution"] == "choice" else [spec["low"], spec["high"]]
    for value in ends:
        try:
            JobConfig().with_overrides({dotted: value}).validate()
        except (ValueError, TypeError) as err:
            _fail(source, f"params.{name}", f"value {value!r} is not valid for {dotted}: {err}")


def _check_baseline(source: str, baseline, params: dict) -> dict:
    """``baseline``: a mapping of config settings (aliases or dotted paths) that are not searched."""
    if baseline is None:
        return {}
    if not isinstance(baseline, dict) or not baseline:
        _fail(source, "baseline", f"must be a non-empty mapping such as {{meltr.combiner: mtl}}, got {baseline!r}")
    searched = {FIELD_ALIASES.get(n, n) for n in params}
    for name, value in baseline.items():
        dotted = _param_path(source, name)
        if dotted in searched:
            _fail(source, f"baseline.{name}", "is also searched in params: a baseline setting must be fixed")
        try:
            JobConfig().with_overrides({dotted: value}).validate()
        except (ValueError, TypeError) as err:
            _fail(source, f"baseline.{name}", f"value {value!r} is not valid for {dotted}: {err}")
    return dict(baseline)


def _check_scheduler(source: str, scheduler) -> dict:
    if scheduler is None:
        return {"type": "none"}
    if not isinstance(scheduler, dict):
        _fail(source, "scheduler", f"must be a mapping, got {scheduler!r}")
    for extra in sorted(set(scheduler) - SCHEDULER_KEYS):
        _fail(source, f"scheduler.{extra}", f"unknown key (expected {sorted(SCHEDULER_KEYS)})")
    kind = scheduler.get("type", "asha")
    if kind not in {"asha", "none"}:
        _fail(source, "scheduler.type", f"must be 'asha' or 'none', got {kind!r}")
    for key in ("grace_period", "reduction_factor", "max_t"):
        if key in scheduler:
            value = scheduler[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                _fail(source, f"scheduler.{key}", f"must be a number >= 1, got {value!r}")
    return {"type": kind, **{k: v for k, v in scheduler.items() if k != "type"}}


def parse_space(data, source: str = "<dict>") -> SearchSpace:
    """Validate a loaded space mapping and return a :class:`SearchSpace`; errors name the bad key."""
    if not isinstance(data, dict):
        _fail(source, "<top>", f"must be a mapping, got {type(data).__name__}")
    for extra in sorted(set(data) - TOP_KEYS):
        _fail(source, extra, f"unknown key (expected one of {sorted(TOP_KEYS)})")
    for key in ("metric", "mode", "params"):
        if key not in data:
            _fail(source, key, "missing")
    if not isinstance(data["metric"], str) or not data["metric"]:
        _fail(source, "metric", f"must be a metric name such as 'val_r1', got {data['metric']!r}")
    if data["mode"] not in {"min", "max"}:
        _fail(source, "mode", f"must be 'min' or 'max', got {data['mode']!r}")
    searcher = data.get("searcher", "hyperopt")
    if searcher not in SEARCHERS:
        _fail(source, "searcher", f"must be one of {sorted(SEARCHERS)}, got {searcher!r}")
    num_samples = data.get("num_samples", 8)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        _fail(source, "num_samples", f"must be an integer >= 1, got {num_samples!r}")
    if not isinstance(data["params"], dict) or not data["params"]:
        _fail(source, "params", "must be a non-empty mapping of hyperparameter -> distribution")
    params, seen = {}, {}
    for name, spec in data["params"].items():
        dotted = _param_path(source, name)
        if dotted in seen:
            _fail(source, f"params.{name}", f"searches {dotted} a second time (also as {seen[dotted]!r})")
        seen[dotted] = name
        params[name] = _check_distribution(source, name, spec)
        _check_values_fit_config(source, dotted, name, params[name])
    return SearchSpace(metric=data["metric"], mode=data["mode"], params=params, searcher=searcher,
                       num_samples=num_samples, scheduler=_check_scheduler(source, data.get("scheduler", {})),
                       description=str(data.get("description", "")), source=source,
                       baseline=_check_baseline(source, data.get("baseline"), params))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space from a YAML path, or by name from the shipped ones (``"default"``, ``"violet_retrieval"``)."""
    path = Path(name_or_path)
    source = path if path.is_file() else _shipped(str(name_or_path))
    if source is None:
        raise SpaceError(f"search space {name_or_path!r}: no such file, and no shipped tune_spaces/"
                         f"{name_or_path}.yaml (available: {list_spaces()})")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpaceError(f"search space {source}: not valid YAML: {err}") from None
    return parse_space(data, source=str(source))


def list_spaces() -> list[str]:
    """Names of the shipped space files (``meltr_ray/tune_spaces/*.yaml``)."""
    return sorted(e.name[:-len(".yaml")] for e in shipped_spaces().iterdir() if e.name.endswith(".yaml"))


def space_for(backbone: str, task: str) -> SearchSpace:
    """The shipped space for a backbone family and task (``violet_retrieval.yaml``), else ``default.yaml``."""
    from .recipes import backbone_family
    family = backbone_family(backbone)             # the spec's family: resnet32 → resnet
    # qa_mc / qa_oe share the family's QA space (violet_qa.yaml)
    for name in (f"{family}_{task}", f"{family}_{task.split('_')[0]}", "default"):
        if _shipped(name) is not None:
            return load_space(name)
    raise SpaceError(f"no search space for {family}/{task} and no tune_spaces/default.yaml")


# The paper's setting (Supp. A.3): γ = 0.3 (grid {0.1, 0.3, 0.5}), α = 3e-5, β = 1e-4, K = 3, official auxgrad_every 3;
# the paper's Neumann step is α itself (3e-5).
PAPER_VALUES = {h.path: h.paper_value for h in HYPERPARAMETERS}


def paper_point(space: SearchSpace) -> dict | None:
    """The paper's setting in the space's parameter names, when every searched parameter has a paper value
    inside its range (the searcher then evaluates it first); else ``None``."""
    point = {}
    for name in space.params:
        value = PAPER_VALUES.get(FIELD_ALIASES.get(name, name))
        if value is None or not space.contains(name, value):
            return None
        point[name] = value
    return point
