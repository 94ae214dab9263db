"""The digits experiment's table, target check, files and plot (from :func:`.digits.run_experiment`'s result).

Per regime and method: mean ± sample standard deviation of the test accuracy over seeds. The issue's target
for a MELTR row, per regime: its mean ≥ MTL's mean, no seed more than 1 point below MTL on the same seed, and
its mean within 0.5 point of the best fixed choice (MTL or primary only).
"""
from __future__ import annotations

import json
import os

import numpy as np

SEED_TOLERANCE = 1.0          # points a MELTR seed may fall below MTL's same seed
BEST_FIXED_TOLERANCE = 0.5    # points MELTR's mean may fall below the best fixed choice
TARGET_ROWS = ("meltr", "meltr_split")


def _accuracies(runs: list, regime: str, method: str) -> dict:
    return {r["seed"]: r["accuracy"] for r in runs if r["regime"] == regime and r["method"] == method}


def summarise(result: dict) -> dict:
    """``{regime: {method: {"label", "mean", "std", "seeds": {seed: acc}, "train_images", "meta_images"}}}``."""
    runs, table = result["runs"], {}
    for regime in result["config"]["regimes"]:
        rows = {}
        for method in result["config"]["methods"]:
            accs = _accuracies(runs, regime, method)
            if not accs:
                continue
            values = np.array(list(accs.values()), dtype=float)
            first = next(r for r in runs if r["regime"] == regime and r["method"] == method)
            rows[method] = {"label": first["label"], "mean": float(values.mean()),
                            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "seeds": accs,
                            "train_images": first.get("train_images"), "meta_images": first.get("meta_images", 0)}
        table[regime] = rows
    return table


def target_check(table: dict, row: str = "meltr") -> dict:
    """Per regime: the three target conditions for MELTR row ``row`` and by how much each is met or missed."""
    out = {}
    for regime, rows in table.items():
        if row not in rows or "mtl" not in rows:
            continue
        meltr, mtl = rows[row], rows["mtl"]
        fixed = [rows[k]["mean"] for k in ("mtl", "primary") if k in rows]
        worst_seed = min(meltr["seeds"][s] - mtl["seeds"][s] for s in meltr["seeds"] if s in mtl["seeds"])
        mean_gap, best_gap = meltr["mean"] - mtl["mean"], meltr["mean"] - max(fixed)
        out[regime] = {"mean_minus_mtl": mean_gap, "worst_seed_minus_mtl": worst_seed,
                       "mean_minus_best_fixed": best_gap,
                       "met": bool(mean_gap >= 0 and worst_seed >= -SEED_TOLERANCE
                                   and best_gap >= -BEST_FIXED_TOLERANCE)}
    return out


def rich_table(table: dict):
    from rich.table import Table
    regimes = list(table)
    out = Table(title="digits: test accuracy (%) over seeds, mean ± std")
    out.add_column("method")
    for regime in regimes:
        out.add_column(regime, justify="right")
        out.add_column("Δ MTL", justify="right")
    for method, cells in _cells(table).items():
        out.add_row(_label(table, method), *[c for pair in cells for c in pair])
    return out


def _label(table: dict, method: str) -> str:
    return next(rows[method]["label"] for rows in table.values() if method in rows)


def _cells(table: dict) -> dict:
    """``{method: [(mean ± std, Δ vs MTL) per regime]}`` as text."""
    methods = list(dict.fromkeys(m for rows in table.values() for m in rows))
    cells = {}
    for method in methods:
        cells[method] = []
        for rows in table.values():
            row, mtl = rows.get(method), rows.get("mtl")
            if row is None:
                cells[method].append(("–", "–"))
                continue
            delta = f"{row['mean'] - mtl['mean']:+.2f}" if mtl is not None else "–"
            cells[method].append((f"{row['mean']:.2f} ± {row['std']:.2f}", delta))
    return cells


def markdown(table: dict, checks: dict, config: dict) -> str:
    regimes = list(table)
    head = "| method | " + " | ".join(f"{r} | Δ MTL" for r in regimes) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(regimes)]
    for method, cells in _cells(table).items():
        lines.append(f"| {_label(table, method)} | " + " | ".join(f"{a} | {d}" for a, d in cells) + " |")
    lines += ["", f"Seeds {config['seeds']}; backbone updates per run {config['steps']}; batch "
              f"{config['batch_size']}; {config['train_images']} train / {config['test_images']} test images."]
    for row, per_regime in checks.items():
        for regime, c in per_regime.items():
            lines.append(f"* target for `{row}`, {regime}: mean − MTL {c['mean_minus_mtl']:+.2f}, worst seed − MTL "
                         f"{c['worst_seed_minus_mtl']:+.2f}, mean − best fixed {c['mean_minus_best_fixed']:+.2f} → "
                         f"**{'met' if c['met'] else 'missed'}**")
    split = {r: rows["meltr_split"] for r, rows in table.items() if "meltr_split" in rows}
    for regime, row in split.items():
        lines.append(f"* meta split, {regime}: {row['meta_images']} images held out of "
                     f"{row['meta_images'] + row['train_images']} (trained on {row['train_images']})")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: str) -> dict:
    """``digits.md``, ``digits.json`` and ``digits.png`` under ``out``; returns ``{kind: path}``."""
    os.makedirs(out, exist_ok=True)
    table = summarise(result)
    checks = {row: target_check(table, row) for row in TARGET_ROWS}
    paths = {"markdown": os.path.join(out, "digits.md"), "json": os.path.join(out, "digits.json"),
             "plot": os.path.join(out, "digits.png")}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown(table, checks, result["config"]))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"table": table, "targets": checks, **result}, f, indent=1, default=str)
    plot(result, table, paths["plot"])
    return paths


def _mean_weights(runs: list, regime: str, method: str) -> tuple[np.ndarray, dict]:
    """Steps and, per loss, the learned weight ∂L/∂ℓ_t averaged over seeds at each logged step."""
    curves = [r["weights"] for r in runs if r["regime"] == regime and r["method"] == method and r["weights"]]
    if not curves:
        return np.array([]), {}
    length = min(len(c) for c in curves)
    steps = np.array([curves[0][i][0] for i in range(length)])
    names = list(curves[0][0][1])
    return steps, {n: np.mean([[c[i][1][n] for i in range(length)] for c in curves], axis=0) for n in names}


def plot(result: dict, table: dict, path: str) -> None:
    """Left: accuracy per method and regime (mean ± std). Right, per regime: MELTR's task weights over training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    regimes = list(table)
    fig, axes = plt.subplots(1, 1 + len(regimes), figsize=(6 + 4.5 * len(regimes), 5))
    methods = list(dict.fromkeys(m for rows in table.values() for m in rows))
    width = 0.8 / max(len(regimes), 1)
    for i, regime in enumerate(regimes):
        means = [table[regime].get(m, {}).get("mean", np.nan) for m in methods]
        stds = [table[regime].get(m, {}).get("std", 0.0) for m in methods]
        axes[0].bar(np.arange(len(methods)) + i * width, means, width, yerr=stds, label=regime, capsize=2)
    axes[0].set_xticks(np.arange(len(methods)) + width * (len(regimes) - 1) / 2)
    axes[0].set_xticklabels([_label(table, m) for m in methods], rotation=60, ha="right", fontsize=7)
    finite = [r["accuracy"] for r in result["runs"]]
    axes[0].set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 2))
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    for ax, regime in zip(axes[1:], regimes):
        for method, style in (("meltr", "-"), ("meltr_split", "--")):
            steps, curves = _mean_weights(result["runs"], regime, method)
            for name, values in curves.items():
                ax.plot(steps, values, style, label=f"{method}: {name}")
        ax.set_title(f"learned task weights ∂L/∂ℓ_t, {regime}")
        ax.set_xlabel("backbone update")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
