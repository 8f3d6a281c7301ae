"""PNG figures of the benchmark results (matplotlib, an optional extra imported only here).

Every function takes plain data (the dicts the benchmarks write as JSON, or arrays) and a path,
so a figure can be redrawn from a saved JSON file without rerunning anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from varrt.bench.insertion_deletion import CURVES
from varrt.core.errors import VarrtError


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend; a one-line error when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise VarrtError(
            "plots need matplotlib, an optional extra: pip install 'varrt[plots]' (or pass --no-plots)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike[str]) -> str:
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=110)
    pyplot().close(figure)
    return os.fspath(path)


def gpg_bars(report: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Grouped bars: base vs VAR pointing-game score per method, with 95% bootstrap intervals."""
    plt = pyplot()
    methods = [m for m, entry in report["methods"].items() if "refused" not in entry]  # refused: no scores
    x = np.arange(len(methods))
    figure, axes = plt.subplots(figsize=(1.6 * len(methods) + 2, 4))
    for offset, kind, color in ((-0.2, "base", "#8c8c8c"), (0.2, "var", "#d62728")):
        stats = [report["methods"][m][kind] for m in methods]
        means = np.array([s["mean"] for s in stats])
        errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] for s in stats]).T
        axes.bar(
            x + offset,
            means,
            0.4,
            yerr=errors,
            capsize=3,
            color=color,
            label=kind if kind == "base" else "VAR",
        )
    axes.axhline(0.25, color="black", linestyle=":", linewidth=1, label="uniform map (0.25)")
    axes.set_xticks(x, [m.replace("_", "\n") for m in methods])
    axes.set_ylim(0, 1)
    axes.set_ylabel("grid pointing game score")
    axes.set_title(f"Grid pointing game, {report['cells']} cells in {report['grids']} grids (95% bootstrap CI)")
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def _signed_image(axes: Any, saliency: np.ndarray) -> None:
    limit = float(np.abs(saliency).max()) or 1.0
    axes.imshow(saliency, cmap="bwr", vmin=-limit, vmax=limit)
    axes.set_xticks([])
    axes.set_yticks([])


def gpg_examples(
    grid_pixels: np.ndarray,
    maps: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
) -> str:
    """One grid and, per method, the channel-summed base and VAR map of each of its 4 classes."""
    plt = pyplot()
    methods = list(maps)
    figure, axes = plt.subplots(2 * len(methods), 5, figsize=(10, 2.1 * 2 * len(methods)), squeeze=False)
    for row, method in enumerate(methods):
        for kind_index, (kind, saliency) in enumerate(zip(("base", "VAR"), maps[method], strict=True)):
            line = axes[2 * row + kind_index]
            line[0].imshow(grid_pixels)
            line[0].set_xticks([])
            line[0].set_yticks([])
            line[0].set_ylabel(f"{method}\n{kind}", fontsize=7)
            for k in range(4):
                _signed_image(line[k + 1], saliency[k])
                if row == 0 and kind_index == 0:
                    line[k + 1].set_title(f"cell {k}: {class_names[k][:22]}", fontsize=7)
    return _save(figure, path)


def sanity_curves(report: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Spearman and SSIM to the original map against the number of layers randomized."""
    plt = pyplot()
    depths = report["depths"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, measure in zip(axes, ("spearman", "ssim"), strict=True):
        for index, (method, kinds) in enumerate(report["similarity"].items()):
            color = colors[index % len(colors)]
            panel.plot(depths, kinds["base"][measure], "--o", color=color, markersize=3, label=f"{method} base")
            panel.plot(depths, kinds["var"][measure], "-o", color=color, markersize=3, label=f"{method} VAR")
        panel.set_xlabel("layers randomized, from the output (cascading)")
        panel.set_ylabel({"spearman": "Spearman rank correlation", "ssim": "SSIM"}[measure])
        panel.set_ylim(-0.1 if measure == "spearman" else 0, 1.05)
        panel.axhline(0, color="black", linewidth=0.5)
    axes[1].legend(fontsize=7, ncol=2)
    figure.suptitle("Cascading randomization: similarity to the original model's map (lower = more sensitive)")
    return _save(figure, path)


def sanity_maps(
    maps: Mapping[str, Mapping[str, np.ndarray]], depths: Sequence[int], path: str | os.PathLike[str]
) -> str:
    """Rows: method x (base, VAR); columns: randomization depth. Each map scaled to its own max."""
    plt = pyplot()
    rows = [(method, kind) for method in maps for kind in ("base", "var")]
    figure, axes = plt.subplots(
        len(rows), len(depths), figsize=(1.4 * len(depths) + 1, 1.4 * len(rows) + 0.5), squeeze=False
    )
    for r, (method, kind) in enumerate(rows):
        for c, depth in enumerate(depths):
            saliency = maps[method][kind][c]
            axes[r, c].imshow(saliency / (saliency.max() or 1.0), cmap="magma", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"{depth} layers", fontsize=7)
            if c == 0:
                axes[r, c].set_ylabel(f"{method}\n{'VAR' if kind == 'var' else kind}", fontsize=7)
    return _save(figure, path)


def speed_bars(report: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Latency (batch 1) and throughput per method, one bar group per flow (backend or reference)."""
    plt = pyplot()
    rows = report["results"]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    flows = list(dict.fromkeys(row["flow"] for row in rows))
    batch_sizes = sorted({int(b) for row in rows for b in row.get("throughput", {})})
    figure, axes = plt.subplots(1, 1 + len(batch_sizes), figsize=(5 * (1 + len(batch_sizes)), 4), squeeze=False)
    width = 0.8 / max(len(flows), 1)
    x = np.arange(len(methods))
    for f, flow in enumerate(flows):
        by_method = {row["method"]: row for row in rows if row["flow"] == flow}
        latency = [by_method.get(m, {}).get("latency_ms", {}).get("median", np.nan) for m in methods]
        axes[0, 0].bar(x + f * width, latency, width, label=flow)
        for b, batch in enumerate(batch_sizes):
            rate = [by_method.get(m, {}).get("throughput", {}).get(str(batch), np.nan) for m in methods]
            axes[0, b + 1].bar(x + f * width, rate, width, label=flow)
    axes[0, 0].set_ylabel("latency, batch 1 (ms, median)")
    axes[0, 0].set_yscale("log")
    for b, batch in enumerate(batch_sizes):
        axes[0, b + 1].set_ylabel(f"throughput, batch {batch} (images/s)")
    for panel in axes[0]:
        panel.set_xticks(x + width * (len(flows) - 1) / 2, [m.replace("_", "\n") for m in methods], fontsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(f"K = {report['settings']['k']} classes per image")
    return _save(figure, path)


def deletion_curves(report: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Insertion / deletion: AUC bars (base vs VAR, 95% CI, random ranking dotted) and mean curves,
    per curve kind."""
    plt = pyplot()
    methods = list(report["methods"])
    fractions = report["fractions"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(2, 2, figsize=(max(10.0, 2.4 * len(methods) + 5), 8), squeeze=False)
    x = np.arange(len(methods))
    for column, curve in enumerate(CURVES):
        bars = axes[0, column]
        for offset, kind, color in ((-0.2, "base", "#8c8c8c"), (0.2, "var", "#d62728")):
            stats = [report["methods"][m][curve][kind] for m in methods]
            means = np.array([s["mean"] for s in stats])
            errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] for s in stats]).T
            bars.bar(
                x + offset, means, 0.4, yerr=errors, capsize=3, color=color, label="VAR" if kind == "var" else kind
            )
        bars.axhline(report["reference"][curve]["auc"]["mean"], color="black", linestyle=":", label="random ranking")
        bars.set_xticks(x, [m.replace("_", "\n") for m in methods])
        bars.set_ylim(0, 1)
        better = "lower" if curve == "deletion" else "higher"
        bars.set_ylabel(f"{curve} AUC ({better} is better)")
        bars.legend(fontsize=8)
        lines = axes[1, column]
        for index, method in enumerate(methods):
            color = colors[index % len(colors)]
            entry = report["methods"][method][curve]
            lines.plot(fractions, entry["mean_curve_base"], "--", color=color, label=f"{method} base")
            lines.plot(fractions, entry["mean_curve_var"], "-", color=color, label=f"{method} VAR")
        lines.plot(fractions, report["reference"][curve]["mean_curve"], ":", color="black", label="random")
        lines.set_xlabel(f"fraction of pixels {'deleted' if curve == 'deletion' else 'inserted'}")
        lines.set_ylabel("probability of the explained class (mean)")
        lines.set_ylim(0, 1)
        lines.legend(fontsize=7, ncol=2)
    settings = report["settings"]
    figure.suptitle(
        f"Insertion / deletion, {len(report['images'])} images, {settings['steps']} steps, "
        f"{settings['baseline']} baseline, {settings['ranking']} ranking (95% bootstrap CI)"
    )
    return _save(figure, path)
