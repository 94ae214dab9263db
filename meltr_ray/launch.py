"""Argument parsing and output shared by ``launchers/*.py`` and the ``meltr-ray train|tune|demo`` commands.

Each command is ``<name>_arguments(parser)`` + ``run_<name>(args) -> exit code`` (the CLI's convention);
the launchers call :func:`tune_main`. Ray is imported only inside the ``run_*`` functions (through the API).
"""
from __future__ import annotations

import argparse

import yaml

# The families a launcher task defaults to, in order of preference, when registered (else the registry's first).
PREFERRED_FAMILY = {"captioning": "univl", "sentiment": "univl"}


def default_backbone(task: str | None) -> str | None:
    """The backbone family a launcher uses for ``task`` when ``--backbone`` is not given, from the specs."""
    from .backbones import families_for_task
    families = families_for_task(task or "retrieval")
    preferred = PREFERRED_FAMILY.get(task or "", "violet")
    return preferred if preferred in families else (families[0] if families else PREFERRED_FAMILY.get(task))


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. meta.clip_norm=5), got {text!r}")
    return key, yaml.safe_load(value)


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
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set meta.clip_norm=5 --set train.batch_size=16")
    p.add_argument("--address", help="Ray address (default: this node's cluster, else a local one)")
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
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space file's)")
    p.add_argument("--searcher", choices=["hyperopt", "random"], help="hyperopt = TPE (default), random = smoke")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restore", metavar="EXPERIMENT", help="finish an interrupted experiment (storage/name)")
    p.add_argument("--no-progress", action="store_true", help="Tune's own output instead of the live table")


def run_tune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from . import api
    from .cluster.progress import print_summary
    if args.restore:
        results = api.restore(args.restore, address=args.address)
    else:
        results = api.tune(space=args.space, num_samples=args.num_samples, searcher=args.searcher, seed=args.seed,
                           progress=not args.no_progress, **_job_kwargs(args))
    console = Console()
    for result in results:
        if result.error:
            console.print(f"[red]trial {result.path} failed:[/red] {result.error}")
    metric = results._experiment_analysis.default_metric
    from .cluster.driver import JOB_KEY, RUNTIME_KEY
    params = [k for k in results[0].config if k not in (JOB_KEY, RUNTIME_KEY)]
    print_summary(console, results, params, metric)
    return 0 if not results.errors else 1


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from . import api
    result = api.train(**_job_kwargs(args))
    Console().print({k: v for k, v in (result.metrics or {}).items() if not k.startswith("config")})
    Console().print(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0 if result.error is None else 1


def tune_main(task: str, argv=None, description: str | None = None) -> int:
    """Entry point of ``launchers/tune_<task>.py``."""
    parser = argparse.ArgumentParser(description=description)
    tune_arguments(parser, task)
    return run_tune(parser.parse_args(argv))


def demo_arguments(p: argparse.ArgumentParser) -> None:
    tune_arguments(p, "retrieval")


def run_demo(args: argparse.Namespace) -> int:
    """The embedded demo: ``tune`` with no data (synthetic mp4s → shards → violet_tiny, CPU workers)."""
    args.data = None
    return run_tune(args)
