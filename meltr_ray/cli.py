"""``meltr-ray``: the command line (``meltr-ray ingest|…``).

Each subcommand is two functions — ``<name>_arguments(parser)`` adds its options, ``run_<name>(args) -> int``
does the work — plus one :func:`register` line at the bottom of this file. Heavy imports (Ray, torch) happen
inside ``run_*`` so ``meltr-ray --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

SUBCOMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def register(name: str, arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], help: str) -> None:
    """Add subcommand ``name``: ``arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""
    SUBCOMMANDS[name] = (arguments, run, help)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.replace("-", "_"), value


# ---- ingest ------------------------------------------------------------------------------------------------
def ingest_arguments(p: argparse.ArgumentParser) -> None:
    from .data.ingest import FORMATS

    p.add_argument("--format", default="jsonl", choices=sorted(FORMATS), help="annotation format (default jsonl)")
    p.add_argument("--videos", help="folder the annotation's video paths are relative to")
    p.add_argument("--annotations", required=True, help="annotation file (JSONL, CSV, or the dataset's own)")
    p.add_argument("--out", required=True, help="output folder for the shards and ingest_report.json")
    p.add_argument("--workers", type=int, default=None, help="probe processes (default: all cores)")
    p.add_argument("--vq", help="optional .npz {id: int array (n_frames, h, w)} of visual-token ids (Violet MVM)")
    p.add_argument("--min-frames", type=int, default=1, help="skip videos with fewer frames (default 1)")
    p.add_argument("--probe-timeout", type=float, default=60.0, help="seconds per file before it counts as hung")
    p.add_argument("--meta-fraction", type=float, default=0.0, help="fraction of train rows moved to split 'meta'")
    p.add_argument("--extra-split", action="append", default=[], metavar="NAME",
                   help="accept split NAME besides train|meta|val|test (repeatable); rows of other splits are "
                        "skipped as 'unknown split'")
    p.add_argument("--answer-vocab-size", type=int, default=1000, help="top-K open-ended answers (default 1000)")
    p.add_argument("--shard-mb", type=float, default=256, help="target shard size in MB of source (default 256)")
    p.add_argument("--row-group-rows", type=int, default=None, help="clips per row group (default: ~16 MB)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="also train a WordPiece vocab.txt of this size on the train texts (into --out)")
    p.add_argument("--allow-pickle", action="store_true", help="allow reading legacy pickles (trusted files only)")
    p.add_argument("--legacy-frames", help="Violet img_*.pkl of base64 JPEG frames, turned into mp4s "
                                           "(needs --allow-pickle)")
    p.add_argument("--opt", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="format option, e.g. --opt split_mode=9k --opt train_list=MSRVTT_train.9k.csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary table")


def run_ingest(args: argparse.Namespace) -> int:
    from .data.ingest import ingest
    from .data.probe import ProbePoolError

    try:
        report = ingest(args.format, videos=args.videos, annotations=args.annotations, out=args.out,
                        workers=args.workers, vq=args.vq, min_frames=args.min_frames,
                        probe_timeout_s=args.probe_timeout, meta_fraction=args.meta_fraction,
                        answer_vocab_size=args.answer_vocab_size, shard_bytes=int(args.shard_mb * 1e6),
                        row_group_rows=args.row_group_rows, vocab_size=args.vocab_size,
                        allow_pickle=args.allow_pickle, legacy_frames=args.legacy_frames,
                        extra_splits=args.extra_split, progress=not args.no_progress, **dict(args.opt))
    except ProbePoolError as exc:
        print(f"meltr-ray ingest: error: {exc}", file=sys.stderr)
        return 1
    if not args.no_progress:
        from rich.console import Console
        console = Console(stderr=True)
        for row in report.skipped[:20]:
            console.print(f"[yellow]skipped[/] {row['id']} ({row['video']}): {row['reason']}")
        if len(report.skipped) > 20:
            console.print(f"… {len(report.skipped) - 20} more in {args.out}/ingest_report.json")
    return 0 if report.rows_written else 1


# ---- experiment --------------------------------------------------------------------------------------------
def experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["digits"], help="digits: MELTR vs fixed combinations on sklearn's digits")
    p.add_argument("--out", default="experiment_digits", help="output folder (table .md/.json, plot .png)")
    p.add_argument("--quick", action="store_true", help="one seed, a few updates per run: a smoke run")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 1 with --quick)")
    p.add_argument("--methods", help="comma-separated method keys (default: all)")
    p.add_argument("--regimes", help="comma-separated regimes (default: 'all labels,20%% labels')")
    p.add_argument("--steps", type=int, help="backbone updates per run in every regime (default: per regime)")
    p.add_argument("--set", dest="overrides", action="append", type=_config_override, default=[],
                   metavar="KEY=VALUE", help="config override for every run, e.g. --set meta.reg_weight=0.3")


def _config_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` as the launchers' ``--set`` reads it (:func:`meltr_ray.launch.parse_override`)."""
    from .launch import parse_override
    return parse_override(text)


def run_experiment(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .experiments import digits, report
    console = Console()
    seeds = args.seeds or (1 if args.quick else 5)
    steps = dict(digits.QUICK_STEPS) if args.quick else {}
    if args.steps:
        steps = {regime: args.steps for regime in digits.REGIMES}
    result = digits.run_experiment(
        seeds=tuple(range(seeds)), steps=steps, overrides=dict(args.overrides),
        methods=tuple(args.methods.split(",")) if args.methods else digits.METHOD_KEYS,
        regimes=tuple(args.regimes.split(",")) if args.regimes else tuple(digits.REGIMES),
        progress=console.print)
    paths = report.write_outputs(result, args.out)
    console.print(report.rich_table(report.summarise(result)))
    console.print(open(paths["markdown"], encoding="utf-8").read().split("\n\n", 1)[-1])
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")
    return 0


# ---- inspect -------------------------------------------------------------------------------------------------
def _reference(text: str):
    if text == "observed":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'observed' or a number, got {text!r}") from None


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (or its state.pt), e.g. the summary's 'checkpoint'")
    p.add_argument("--out", default="meltr_plots", help="output folder for the PNGs (default meltr_plots)")
    p.add_argument("--tasks", nargs=2, metavar=("TASK_A", "TASK_B"), help="the two losses of the surface plot")
    p.add_argument("--reference", type=_reference, default="observed",
                   help="where the losses not being swept are held: 'observed' (default: each task's mean "
                        "training loss in the checkpoint's epoch) or one number for all")


def run_inspect(args: argparse.Namespace) -> int:
    from .plots import inspect_checkpoint
    for path in inspect_checkpoint(args.checkpoint, args.out, tasks=args.tasks, reference=args.reference):
        print(path)
    return 0


# ---- dashboard -----------------------------------------------------------------------------------------------
GRAFANA_STEPS = """With Prometheus and Grafana installed (Ray's metrics guide), on this node:
  ray metrics launch-prometheus
  grafana-server --homepath /usr/share/grafana --config {temp}/session_latest/metrics/grafana/grafana.ini web
then open http://localhost:3000 → Dashboards → Ray → MELTR."""


def dashboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", help="Tune experiment folder (the run summary's 'experiment')")
    p.add_argument("--host", default="127.0.0.1", help="interface TensorBoard listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TensorBoard port (default 6006, else a free one)")
    p.add_argument("--grafana", action="store_true",
                   help="install the MELTR Grafana dashboard next to Ray's (live metrics of a running cluster)")
    p.add_argument("--ray-temp-dir", default="/tmp/ray", help="Ray's temp dir on this node (default /tmp/ray)")


def run_dashboard(args: argparse.Namespace) -> int:
    from . import dashboard
    if not args.experiment and not args.grafana:
        raise ValueError("give an experiment folder (TensorBoard of a finished search) and/or --grafana")
    if args.grafana:
        print(f"installed the MELTR Grafana dashboard:\n{dashboard.install_grafana_dashboard(args.ray_temp_dir)}")
        print(GRAFANA_STEPS.format(temp=args.ray_temp_dir))
    if not args.experiment:
        return 0
    port = args.port if args.port is not None else dashboard.free_port()
    command = dashboard.tensorboard_command(args.experiment, args.host, port)
    dashboard.require_tensorboard()
    print(f"TensorBoard of {command[command.index('--logdir') + 1]}\n{dashboard.tensorboard_url(args.host, port)}"
          "\n(Ctrl-C to stop)", flush=True)
    return dashboard.serve(command)


# ---- entry point -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meltr-ray", description="MELTR fine-tuning of video models on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (arguments, _, help_text) in SUBCOMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command][1](args)
    except (FileNotFoundError, ValueError, PermissionError) as exc:
        print(f"meltr-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


register("ingest", ingest_arguments, run_ingest, "videos (or features) + annotations → Parquet shards")
register("experiment", experiment_arguments, run_experiment,
         "measured experiments: `digits` = MELTR vs MTL, primary-only, fixed and linear on sklearn's digits")
register("inspect", inspect_arguments, run_inspect,
         "plot what MELTR learned from a checkpoint (supplementary Fig. 1 and Fig. 3)")
register("dashboard", dashboard_arguments, run_dashboard,
         "reopen a search's curves (TensorBoard on its experiment folder); --grafana: live MELTR panels")

# ---- Ray Train / Tune layer (options and runners live in meltr_ray/launch.py) ---------------------------------
from . import launch as _launch  # noqa: E402  (light: argparse + yaml only)

register("train", _launch.job_arguments, _launch.run_train, "one MELTR fine-tuning run on Ray Train")
register("tune", _launch.tune_arguments, _launch.run_tune, "search γ, α, β, K and meta_every with Ray Tune")
register("demo", _launch.demo_arguments, _launch.run_demo,
         "the embedded demo: synthetic videos → shards → violet_tiny search on CPU")

if __name__ == "__main__":
    sys.exit(main())
