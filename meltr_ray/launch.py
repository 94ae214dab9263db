"""Argument parsing and output shared by ``launchers/*.py`` and the ``meltr-ray train|tune|demo`` commands.

Each command is ``<name>_arguments(parser)`` + ``run_<name>(args) -> exit code`` (the CLI's convention);
the launchers call :func:`tune_main`. Ray is imported only inside the ``run_*`` functions (through the API).
"""
from __future__ import annotations

import argparse
import re
import sys

import yaml

# The families a launcher task defaults to, in order of preference, when registered (else the registry's first).
PREFERRED_FAMILY = {"captioning": "univl", "sentiment": "univl"}


def default_backbone(task: str | None) -> str | None:
    """The backbone family a launcher uses for ``task`` when ``--backbone`` is not given, from the specs."""
    from .backbones import families_for_task
    families = families_for_task(task or "retrieval")
    preferred = PREFERRED_FAMILY.get(task or "", "violet")
    return preferred if preferred in families else (families[0] if families else PREFERRED_FAMILY.get(task))


ADDRESS_HELP = ("Ray cluster to join: 'auto' (the cluster this node belongs to, e.g. on a `ray up` head) or "
                "HOST:PORT; default: RAY_ADDRESS if exported, else a private local Ray on 127.0.0.1")


# A decimal number in any spelling Python's float() reads; YAML 1.1 (PyYAML) reads 1e-4, 3E5 and -2e-3 as strings.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → ``(key, value)``: VALUE read as YAML, except that an unquoted number YAML 1.1 leaves a
    string (``train.lr=1e-4``) becomes a float; ints stay ints, quoted and other strings stay strings."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. meta.clip_norm=5), got {text!r}")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return key, float(value)
    return key, parsed


def job_arguments(p: argparse.ArgumentParser, task: str | None = "retrieval") -> None:
    """Options shared by ``train`` and ``tune``: what to fine-tune, on what, where results go."""
    p.add_argument("--backbone", default=default_backbone("qa_oe" if task == "qa" else task),
                   help="registered backbone or family (family → *_base; *_tiny for the demo)")
    p.add_argument("--task", default=task or "retrieval", help="retrieval | qa_oe | qa_mc | action | captioning | sentiment")
    p.add_argument("--data", help="directory or URI of Parquet shards from `meltr-ray ingest` (omit: embedded demo)")
    p.add_argument("--vocab", help="WordPiece vocab.txt for the text (data.vocab_path)")
    p.add_argument("--pretrained", help="local path of the official pretrained checkpoint")
    p.add_argument("--recipe", help="named recipe (meltr_ray.recipes.list_recipes())")
    p.add_argument("--epochs", type=int)
    p.add_argument("--num-workers", type=int, help="Train workers (DDP ranks) per trial (default 8 GPUs)")
    p.add_argument("--cpu", action="store_true", help="CPU workers (gloo) instead of GPUs")
    p.add_argument("--storage", help="results storage: shared on clusters (s3://bucket/path, EFS, FSx)")
    p.add_argument("--name", help="experiment / run name (re-use it to resume a train run)")
    p.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set meta.clip_norm=5 --set train.batch_size=16")
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="module that registers extra backbones, imported here and on every worker "
                        "(repeatable), e.g. --plugin my_pkg.my_family --backbone my_tiny")


def _job_kwargs(args) -> dict:
    overrides = dict(args.overrides)
    if args.vocab:
        overrides["data.vocab_path"] = args.vocab
    return dict(backbone=args.backbone, task=args.task, data=args.data, pretrained=args.pretrained,
                recipe=args.recipe, overrides=overrides, storage_path=args.storage, name=args.name,
                epochs=args.epochs, num_workers=args.num_workers, use_gpu=False if args.cpu else None,
                address=args.address, plugins=args.plugins)


def tune_arguments(p: argparse.ArgumentParser, task: str | None = "retrieval") -> None:
    job_arguments(p, task)
    p.add_argument("--space", help="search-space YAML path or name in tune_spaces/ (default: backbone/task)")
    p.add_argument("--num-samples", type=int,
                   help="number of searched trials (default: the space file's; its baseline trial is one more)")
    p.add_argument("--searcher", choices=["hyperopt", "random"], help="hyperopt = TPE (default), random = smoke")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restore", metavar="EXPERIMENT", help="finish an interrupted experiment (storage/name)")
    p.add_argument("--no-progress", action="store_true", help="Tune's own output instead of the live table")


def ray_start_failed(command: str, err: Exception) -> int:
    """A Ray start or join that failed: its one paragraph on stderr instead of a traceback; exit code 1."""
    print(f"{command}: {err}", file=sys.stderr)
    return 1


def trial_keys(results) -> list[str]:
    """The config keys of the trials in order of first appearance (a trial's config is the searched values
    only; the baseline trial's holds only the baseline's keys)."""
    return list(dict.fromkeys(key for result in results for key in result.config))


def run_tune(args: argparse.Namespace) -> int:
    from . import api
    from .cluster.progress import print_summary, wide_console
    from .cluster.session import RayStartError
    from .cluster.tuner import load_baseline
    try:
        if args.restore:
            results = api.restore(args.restore, address=args.address)
        else:
            results = api.tune(space=args.space, num_samples=args.num_samples, searcher=args.searcher,
                               seed=args.seed, progress=not args.no_progress, **_job_kwargs(args))
    except RayStartError as err:
        return ray_start_failed("tune", err)
    console = wide_console()
    for result in results:
        if result.error:
            console.print(f"[red]trial {result.path} failed:[/red] {result.error}")
    analysis = results._experiment_analysis
    print_summary(console, results, trial_keys(results), analysis.default_metric, analysis.default_mode,
                  baseline=load_baseline(str(results.experiment_path)))
    return 0 if not results.errors else 1


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from . import api
    from .cluster.session import RayStartError
    try:
        result = api.train(**_job_kwargs(args))
    except RayStartError as err:
        return ray_start_failed("train", err)
    Console().print({k: v for k, v in (result.metrics or {}).items() if not k.startswith("config")})
    Console().print(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0 if result.error is None else 1


def registered_families() -> list[str]:
    """Backbone families the registry builds in this installation (``violet`` for ``violet_base``…)."""
    from .backbones import list_families
    return list_families()


def unregistered_backbone(backbone: str) -> str | None:
    """One line saying that ``backbone``'s family is not in this release, or ``None`` when it is."""
    from .backbones import get_spec, resolve_name
    families = registered_families()
    try:
        get_spec(resolve_name(backbone))
        return None
    except ValueError:
        pass
    return (f"backbone {backbone!r} is not available in this release (registered families: "
            f"{', '.join(families)}); pass --backbone with one of them")


def tune_main(task: str, argv=None, description: str | None = None, needs_data: bool = False) -> int:
    """Entry point of ``launchers/tune_<task>.py``. A default backbone that is not registered yet ends here
    with one line and exit code 2; so does ``needs_data`` without ``--data`` (or ``--restore``)."""
    parser = argparse.ArgumentParser(description=description)
    tune_arguments(parser, task)
    args = parser.parse_args(argv)
    problem = None if args.restore else unregistered_backbone(args.backbone)
    if problem is None and needs_data and not (args.data or args.restore):
        problem = ("--data is required (Parquet shards from `meltr-ray ingest`); the embedded demo is "
                   "launchers/tune_retrieval.py")
    if problem is not None:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    return run_tune(args)


DEMO_FIXED = {"--data": "the demo makes its own synthetic videos; use `meltr-ray tune --data DIR`",
              "--backbone": "the demo fine-tunes violet_tiny; use `meltr-ray tune --backbone NAME`",
              "--task": "the demo is text-to-video retrieval; use `meltr-ray tune --task NAME`",
              "--recipe": "the demo runs the violet_demo recipe; use `meltr-ray tune --recipe NAME`",
              "--pretrained": "the demo's violet_tiny starts from random weights",
              "--vocab": "the demo trains its own WordPiece vocabulary",
              "--space": "the demo searches tune_spaces/demo.yaml; use `meltr-ray tune --space`"}


class _NotForDemo(argparse.Action):
    """An option ``meltr-ray demo`` does not use: an error (exit code 2) that says why, never ignored."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not used by the demo: {DEMO_FIXED[option_string]}")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    """The options the demo uses: how many trials, how long, where results go, which Ray."""
    p.add_argument("--num-samples", type=int,
                   help="number of MELTR trials (default: tune_spaces/demo.yaml's 3), besides the MTL one")
    p.add_argument("--epochs", type=int)
    p.add_argument("--searcher", choices=["hyperopt", "random"], help="hyperopt = TPE (default), random = smoke")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", help="results folder (default ~/meltr_results)")
    p.add_argument("--name", help="experiment name")
    p.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.batch_size=4")
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--no-progress", action="store_true", help="Tune's own output instead of the live table")
    for option in DEMO_FIXED:
        p.add_argument(option, action=_NotForDemo, help=argparse.SUPPRESS)
    p.set_defaults(backbone="violet", task="retrieval", data=None, vocab=None, pretrained=None, recipe=None,
                   num_workers=None, cpu=False, space=None, restore=None)


def run_demo(args: argparse.Namespace) -> int:
    """The embedded demo: ``tune`` with no data (synthetic mp4s → shards → violet_tiny, CPU workers)."""
    return run_tune(args)
