"""``varrt bench``: the benchmark subcommands (gpg, sanity, speed, deletion).

``varrt.cli`` calls ``add_parser(subparsers)``; each subcommand sets ``run``, which takes the
parsed arguments and returns an exit code. Every subcommand prints a table, writes a JSON report
and PNG plots into ``--out``, and raises ``UsageError`` / ``VarrtError`` for bad input, which the
CLI prints as one line. ``main(argv)`` runs the group on its own (``python -m varrt.bench.cli``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm
from varrt import data, images
from varrt.bench import gpg, grids, insertion_deletion, plots, sanity, scale, speed
from varrt.core import defaults
from varrt.core.errors import UsageError, VarrtError
from varrt.export.methods import METHOD_TABLE
from varrt.export.model_loading import read_model

DEFAULT_OUT = "varrt-bench"


# --- presentation --------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: left-aligned first column(s) of text, right-aligned numbers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if index < 2 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


class _ProgressAdapter:
    """Feeds the benchmarks' (done, total, note) callbacks into tqdm bars on stderr.

    ``enabled=None`` leaves it to tqdm: drawn only when stderr is a terminal. A new total, or a
    count going back, starts a new bar (a benchmark's next phase)."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.enabled = enabled
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int, note: str) -> None:
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, desc=self.label, file=sys.stderr,
                            disable=None if self.enabled is None else not self.enabled)
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _write_json(report: dict[str, Any], out: pathlib.Path, name: str) -> pathlib.Path:
    path = out / name
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _out_dir(path: str) -> pathlib.Path:
    out = pathlib.Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VarrtError(f"cannot create output folder {out}: {error.strerror or error}") from None
    return out


def _plots_module(args: argparse.Namespace) -> Any:
    if args.no_plots:
        return None
    plots.pyplot()  # fail before the run, not after it, when matplotlib is missing
    return plots


# --- argument helpers ----------------------------------------------------------------------------
def _images_and_methods(p: argparse.ArgumentParser, defaults: Sequence[str],
                        known: Sequence[str] = gpg.METHODS) -> None:
    """--images (default: the bundled photos) and --methods (``known`` or all; default: ``defaults``)."""
    p.add_argument("--images", nargs="+", metavar="PATH", help="folders or files of photos (default: the bundled ones)")
    p.add_argument(
        "--methods",
        type=_method_list(known),
        default=list(defaults),
        help=f"comma-separated, or all = {','.join(known)} (default: {','.join(defaults)})",
    )


def _method_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        methods = list(known) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
        unknown = [m for m in methods if m not in known]
        if unknown or not methods:
            raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(known)} or all")
        return methods

    return parse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _model_path(args: argparse.Namespace) -> pathlib.Path:
    if args.model is None:
        return data.demo_model_path()
    path = pathlib.Path(args.model)
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    return path


def _image_paths(args: argparse.Namespace) -> list[pathlib.Path]:
    """--images: a folder, or image files; default: the photos bundled with varrt."""
    if not args.images:
        return list(data.demo_images())
    paths: list[pathlib.Path] = []
    for entry in args.images:
        path = pathlib.Path(entry)
        if path.is_dir():
            paths.extend(gpg.image_files(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"--images {path}: no such file or folder")
    return paths


def _class_names(model: pathlib.Path) -> Callable[[int], str]:
    """Short ImageNet names when the model has 1000 outputs, else 'class N'."""
    proto = read_model(model)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if dims and dims[-1].dim_value == 1000:
        labels = data.imagenet_labels()
        return lambda label: labels[label].split(",")[0]
    return lambda label: f"class {label}"


def _common(parser: argparse.ArgumentParser, out_default: str) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL.onnx",
        help="ONNX image classifier (default: the bundled EfficientNet-Lite0)",
    )
    parser.add_argument(
        "--out",
        default=out_default,
        metavar="DIR",
        help="folder for the JSON report and PNG plots (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto, onnxruntime, onnxruntime-cpu, onnxruntime-cuda or tensorrt (default: %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots (no matplotlib needed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _method_option_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps-ig",
        dest="ig_steps",
        type=int,
        default=None,
        metavar="N",
        help="integrated gradients: interpolation steps (default: the exporter's)",
    )
    parser.add_argument(
        "--samples", type=int, default=None, metavar="N", help="smoothgrad: noisy samples (default: the exporter's)"
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="CAM methods: feature map (tensor name; default: the exporter's choice)",
    )
    parser.add_argument("--window", type=int, default=None, help="occlusion: window side (default: the exporter's)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion: window step (default: the exporter's)")
    parser.add_argument("--masks", type=int, default=None, metavar="N",
                        help="rise: number of masks (default: the exporter's)")
    parser.add_argument("--chunk", type=int, default=None, metavar="N",
                        help="occlusion, rise: masked copies per forward (default: the exporter's)")


def _explainer_settings(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """What every quality bench passes on to its Explainers: VAR settings, batching, backend,
    per-method options, and the progress bar."""
    return dict(temperature=args.temperature, tau=args.tau, batch_size=args.batch_size, backend=args.backend,
                method_options=_method_options(args), progress=progress)


def _method_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-method Explainer options from the command line (only to the methods that take them)."""
    options: dict[str, dict[str, Any]] = {}
    if args.ig_steps is not None:
        options["integrated_gradients"] = {"steps": args.ig_steps}
    if args.samples is not None:
        options["smoothgrad"] = options["gradient_shap"] = {"samples": args.samples}
    if args.layer is not None:
        for method in (name for name, spec in METHOD_TABLE.items() if spec.cam):
            options[method] = {"layer": args.layer}
    perturbation = {"occlusion": {"window": args.window, "stride": args.stride, "chunk": args.chunk},
                    "rise": {"samples": args.masks, "chunk": args.chunk}}
    for method, given in perturbation.items():
        given = {key: value for key, value in given.items() if value is not None}
        if given:
            options[method] = given
    return options


def _var_scale_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--var-scale", choices=defaults.VAR_SCALES, default=defaults.VAR_SCALE,
                        help="VAR's |A| before the temperature: as is, or divided by each map's max "
                        "(default: %(default)s)")


def _options_line(methods: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> str:
    """The table header's record of the per-method options given (the rest run at the exporter's defaults)."""
    given = [f"{m} " + " ".join(f"{k}={v}" for k, v in options[m].items()) for m in methods if options.get(m)]
    return "method options: " + ("; ".join(given) if given else "the exporter's defaults")


def _var_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                        help="VAR temperature T (default: %(default)s)")
    parser.add_argument("--tau", type=float, default=defaults.TAU, help="VAR threshold tau (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per explainer run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


# --- subcommands ---------------------------------------------------------------------------------
def add_parser(subparsers: Any, parent: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``bench`` and its subcommands to the ``varrt`` CLI's subparsers (``parent``: the options
    every subcommand takes, such as ``--debug``)."""
    bench = subparsers.add_parser(
        "bench",
        help="quality and speed benchmarks (grid pointing game, sanity checks, speed)",
        description="Benchmarks of the explanations: grid pointing game (gpg), cascading model randomization "
        "(sanity) and speed of every backend and method (speed). Each "
        "prints a table and writes a JSON report and PNG plots into --out.",
    )
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    parents = [parent] if parent is not None else []

    p = commands.add_parser(
        "gpg",
        parents=parents,
        help="grid pointing game: base vs VAR per method",
        description="Grid pointing game. Four images of distinct classes tile a 2x2 grid (each cell half the "
        "input size); each cell's class is explained against the grid's four classes, and the score is the "
        "share of the positive attribution mass (channel sum, then positive part) inside that class's cell "
        "(uniform map: 0.25). Reports base vs VAR per method with 95% bootstrap intervals. Default images: "
        "the bundled photos, labelled by the model's own confident prediction.",
    )
    _common(p, os.path.join(DEFAULT_OUT, "gpg"))
    _method_option_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="folders or files of photos, labelled by the "
        "model's prediction (kept above --threshold, one photo per class)",
    )
    source.add_argument(
        "--imagenet-val",
        metavar="DIR",
        help="ImageNet validation folder with LOC_val_solution.csv "
        "and LOC_synset_mapping.txt: true labels, cells the model classifies correctly",
    )
    p.add_argument(
        "--methods",
        type=_method_list(gpg.METHODS),
        default=list(gpg.DEFAULT_METHODS),
        help=f"comma-separated, or all = {','.join(gpg.METHODS)} (default: {','.join(gpg.DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep images the model predicts with at least "
        "this probability (default: 0.5 for --images, 0.1 for the bundled photos, whose top-1 are 0.15-0.95, "
        "0 for --imagenet-val)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="at most N grids, chosen at random with "
        "--seed (default: all arrangements of few images; 100 for --imagenet-val)",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=None,
        metavar="N",
        help="--imagenet-val: classify N random validation images to draw grids from (default: 8 x --limit)",
    )
    _var_options(p)
    _var_scale_option(p)
    p.set_defaults(run=run_gpg_command)

    p = commands.add_parser(
        "sanity",
        parents=parents,
        help="cascading model randomization (Adebayo et al.): base vs VAR",
        description="Cascading model randomization. The Conv/Gemm/MatMul weights and biases are redrawn from "
        "N(0, std of the layer's own weights), from the output layer backwards, one more layer at each step "
        "(normalization layers are kept). Each step's top-1 map (sum of |attribution| over channels) is "
        "compared with the original model's by Spearman rank correlation and SSIM; lower means the method "
        "is sensitive to the model, as it should be.",
    )
    _common(p, os.path.join(DEFAULT_OUT, "sanity"))
    _method_option_arguments(p)
    _images_and_methods(p, sanity.DEFAULT_METHODS, sanity.METHODS)
    p.add_argument(
        "--steps",
        type=int,
        default=8,
        help="about this many randomization depths, geometrically spaced from 1 layer to all (default: %(default)s)",
    )
    p.add_argument(
        "--depths",
        type=_int_list,
        default=None,
        help="explicit comma-separated depths (numbers of layers randomized), instead of --steps",
    )
    p.add_argument(
        "--classes",
        default=defaults.CLASSES,
        help="class rule of the original model's explanation, fixed for all steps (default: %(default)s)",
    )
    _var_options(p)
    _var_scale_option(p)
    p.set_defaults(run=run_sanity_command)

    p = commands.add_parser(
        "speed",
        parents=parents,
        help="latency and throughput of every backend and method",
        description="Latency at batch 1 and throughput at larger batches of one Explainer call (graph run, "
        "VAR, softmax) for every usable backend and method, K classes per image. With the demo model and "
        "torch + captum installed, the PyTorch + Captum reference flow runs in the same process and the "
        "table adds reference/varrt ratios.",
    )
    _common(p, os.path.join(DEFAULT_OUT, "speed"))
    _method_option_arguments(p)
    p.add_argument(
        "--methods",
        type=_method_list(speed.METHODS),
        default=list(speed.METHODS),
        help="comma-separated, or all (default: all)",
    )
    p.add_argument(
        "--backends",
        type=lambda t: [b.strip() for b in t.split(",") if b.strip()],
        default=None,
        help="comma-separated backends (default: every one usable here; overrides --backend)",
    )
    p.add_argument("--batch-sizes", type=_int_list, default=[32, 64], help="throughput batch sizes (default: 32,64)")
    p.add_argument("--classes", default=defaults.CLASSES, help="class rule, sets K (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed batch-1 calls (default: %(default)s)")
    p.add_argument(
        "--throughput-repeats",
        type=int,
        default=3,
        help="timed calls per throughput batch (default: %(default)s)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    reference = p.add_mutually_exclusive_group()
    reference.add_argument(
        "--torch-reference",
        dest="torch_reference",
        action="store_true",
        default=None,
        help="also time the PyTorch + Captum reference (default: when the model is the demo "
        "model and torch + captum are installed)",
    )
    reference.add_argument(
        "--no-torch-reference",
        dest="torch_reference",
        action="store_false",
        help="skip the PyTorch reference",
    )
    p.set_defaults(run=run_speed_command)

    _add_deletion_parser(commands, parents)
    _add_scale_parser(commands, parents)
    return bench


def _add_scale_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "scale", parents=parents, help="images/s of varrt explain: one process vs Ray with 1 and 2 actors",
        description="Images per second of the `varrt explain` command line in one process, on Ray with 1 actor "
        "and on Ray with 2 actors, all on the same total threads, side by side in alternating rounds, over the "
        "bundled photos repeated to --count images; reports each flow's ratio to the single process and checks "
        "that their results.parquet rows are the same.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL.onnx", help="ONNX image classifier (default: the bundled "
                   "EfficientNet-Lite0)")
    p.add_argument("--images", nargs="+", metavar="PATH", help="folders or files of photos (default: the bundled ones)")
    p.add_argument("--count", type=int, default=200, help="images per run: the photos repeated (default: %(default)s)")
    p.add_argument("--method", default="gradient", help="attribution method (default: %(default)s)")
    p.add_argument("--classes", default=defaults.CLASSES, help="class rule (default: %(default)s)")
    p.add_argument("--save", choices=("all", "var", "summary"), default="summary",
                   help="what each run writes besides results.parquet (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each flow, alternating (default: %(default)s)")
    p.add_argument("--threads", type=int, help="total threads of every flow (default: the physical cores)")
    p.add_argument("--no-ray", action="store_true", help="time the single process only")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "scale"), metavar="DIR",
                   help="folder for scale.json (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_scale_command)


def _add_deletion_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "deletion",
        parents=parents,
        help="insertion / deletion AUC (Petsiuk et al.): base vs VAR per method",
        description="Insertion and deletion AUC. Each image's top-1 class is explained (K = 5, top4+min, "
        "top-1 first); pixels are ranked by the map (channel sum, positive part; or --ranking abs), ties in "
        "a seeded random order. Deletion replaces the top-ranked pixels with the baseline in --steps steps, "
        "insertion copies them into the baseline; each step's probability of the class comes from the plain "
        "model in ONNX Runtime, and the AUC is the trapezoid over the fraction of pixels. Lower deletion and "
        "higher insertion AUC are better; a random ranking is the reference. Reports base vs VAR per method "
        "with 95% bootstrap intervals over images.",
    )
    _common(p, os.path.join(DEFAULT_OUT, "deletion"))
    _method_option_arguments(p)
    _images_and_methods(p, insertion_deletion.METHODS, gpg.DEFAULT_METHODS)
    p.add_argument("--steps", type=int, default=32, help="perturbation steps per curve (default: %(default)s)")
    p.add_argument(
        "--ranking",
        choices=insertion_deletion.RANKINGS,
        default="positive",
        help="pixel ranking: positive part of the channel sum, or channel sum of |A| (default: %(default)s)",
    )
    p.add_argument(
        "--baseline",
        choices=insertion_deletion.BASELINES,
        default="zero",
        help="what deleted pixels become and insertion starts from: 0 after normalisation (the mean colour) "
        "or a Gaussian blur of the image (default: %(default)s)",
    )
    p.add_argument(
        "--blur-sigma", type=float, default=5.0, help="blur baseline: sigma in pixels (default: %(default)s)"
    )
    p.add_argument(
        "--perturb-batch",
        type=int,
        default=66,
        metavar="N",
        help="perturbed images per ONNX Runtime call (default: %(default)s, both curves of 32 steps)",
    )
    _var_options(p)
    p.set_defaults(run=run_deletion_command)


def run_gpg_command(args: argparse.Namespace) -> int:
    model = _model_path(args)
    plots = _plots_module(args)
    out = _out_dir(args.out)
    progress = _ProgressAdapter("gpg", enabled=False if args.quiet else None)
    if args.imagenet_val:
        threshold = 0.0 if args.threshold is None else args.threshold
        limit = 100 if args.limit is None else args.limit
        paths, labels = gpg.imagenet_val_listing(args.imagenet_val)
        rng = np.random.default_rng(args.seed)
        pool = min(len(paths), args.pool or 8 * limit)
        chosen = np.sort(rng.choice(len(paths), size=pool, replace=False))
        cells = gpg.load_cells(
            model,
            [paths[i] for i in chosen],
            [labels[i] for i in chosen],
            threshold,
            args.batch_size,
            progress,
        )
    else:
        default = 0.5 if args.images else 0.1  # the bundled photos: astronaut 0.15, cat 0.37 ... espresso 0.95
        threshold = default if args.threshold is None else args.threshold
        limit = args.limit
        cells = gpg.load_cells(model, _image_paths(args), None, threshold, args.batch_size, progress)
    progress.close()
    arrangements = grids.distinct_class_arrangements([c.label for c in cells], limit=limit, seed=args.seed)
    result = gpg.run_gpg(
        model,
        cells,
        arrangements,
        args.methods,
        var_scale=args.var_scale,
        **_explainer_settings(args, progress),
    )
    progress.close()
    report = result.to_json(seed=args.seed)
    report["settings"].update(
        threshold=threshold, seed=args.seed, source="imagenet-val" if args.imagenet_val else "photos"
    )
    name_of = _class_names(model)
    for entry in report["images"]:
        entry["name"] = name_of(entry["label"])
    print(
        f"grid pointing game: {report['grids']} grids, {report['cells']} cells, from "
        f"{len(cells)} images ({', '.join(e['name'] for e in report['images'])})"
    )
    print(_options_line(args.methods, _method_options(args)))
    print(format_table(gpg.TABLE_HEADERS, result.table_rows(seed=args.seed)))
    written = [_write_json(report, out, "gpg.json")]
    if plots is not None:
        written.append(plots.gpg_bars(report, out / "gpg.png"))
        names = [name_of(cells[i].label) for i in result.arrangements[0]]
        assert result.example_grid is not None
        written.append(plots.gpg_examples(result.example_grid, result.example_maps, names, out / "gpg_maps.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _load_inputs(model: pathlib.Path, paths: Sequence[pathlib.Path]) -> np.ndarray:
    prep = images.preprocessing_for(model)
    return np.stack([images.load_image(p, prep) for p in paths])


def run_sanity_command(args: argparse.Namespace) -> int:
    model = _model_path(args)
    plots = _plots_module(args)
    out = _out_dir(args.out)
    inputs = _load_inputs(model, _image_paths(args))
    progress = _ProgressAdapter("sanity", enabled=False if args.quiet else None)
    result = sanity.run_sanity(
        model,
        inputs,
        args.methods,
        args.depths,
        steps=args.steps,
        seed=args.seed,
        classes=args.classes,
        var_scale=args.var_scale,
        **_explainer_settings(args, progress),
    )
    progress.close()
    report = result.to_json()
    print(f"cascading randomization: {len(result.layers)} layers with weights, {len(inputs)} images")
    print(_options_line(args.methods, _method_options(args)))
    print(format_table(sanity.TABLE_HEADERS, result.table_rows()))
    written = [_write_json(report, out, "sanity.json")]
    if plots is not None:
        written.append(plots.sanity_curves(report, out / "sanity.png"))
        written.append(plots.sanity_maps(result.maps, result.depths, out / "sanity_maps.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_speed_command(args: argparse.Namespace) -> int:
    model = _model_path(args)
    plots = _plots_module(args)
    out = _out_dir(args.out)
    backends = args.backends or (None if args.backend == "auto" else [args.backend])
    progress = _ProgressAdapter("speed", enabled=False if args.quiet else None)
    report = speed.run_speed(
        model,
        args.methods,
        backends,
        args.batch_sizes,
        classes=args.classes,
        repeats=args.repeats,
        throughput_repeats=args.throughput_repeats,
        warmup=args.warmup,
        torch_reference=args.torch_reference,
        method_options=_method_options(args),
        progress=progress,
    )
    progress.close()
    headers, rows = speed.table(report)
    print(f"speed: K = {report['settings']['k']}, {report['settings']['cpu_count']} CPU cores")
    print(format_table(headers, rows))
    for line in speed.side_by_side(report):
        print(line)
    for name, reason in report["backends_skipped"].items():
        print(f"skipped {name}: {reason}")
    if report.get("reference_skipped"):
        print(f"skipped {speed.REFERENCE_FLOW} reference: {report['reference_skipped']}")
    written = [_write_json(report, out, "speed.json")]
    if plots is not None:
        written.append(plots.speed_bars(report, out / "speed.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_scale_command(args: argparse.Namespace) -> int:
    if args.rounds < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--rounds and --threads must be at least 1")
    model = _model_path(args)
    photos = _image_paths(args)
    out = _out_dir(args.out)
    progress = _ProgressAdapter("scale", enabled=False if args.quiet else None)
    report = scale.run_scale(model, photos, count=args.count, method=args.method, classes=args.classes,
                             save=args.save, rounds=args.rounds, threads=args.threads, ray=not args.no_ray,
                             progress=progress)
    progress.close()
    settings = report["settings"]
    print(f"scale: {settings['images']} images, {settings['method']} {settings['classes']}, --save {settings['save']}, "
          f"{settings['threads']} threads in every flow, best of {settings['rounds']} alternating rounds"
          f" ({settings['cpu_count']} CPUs)")
    print(format_table(*scale.table(report)))
    if report["ray_skipped"]:
        print(f"skipped Ray: {report['ray_skipped']}")
    elif report["ray_start_s"]:
        print(f"Ray cluster start-up (not timed): {report['ray_start_s']:.1f} s")
    print("wrote " + str(_write_json(report, out, "scale.json")))
    return 0


def run_deletion_command(args: argparse.Namespace) -> int:
    model = _model_path(args)
    plot_module = _plots_module(args)
    out = _out_dir(args.out)
    paths = _image_paths(args)
    images.check_readable(paths)
    inputs = _load_inputs(model, paths)
    progress = _ProgressAdapter("deletion", enabled=False if args.quiet else None)
    result = insertion_deletion.run_insertion_deletion(
        model,
        inputs,
        args.methods,
        paths=paths,
        steps=args.steps,
        ranking=args.ranking,
        baseline=args.baseline,
        blur_sigma=args.blur_sigma,
        seed=args.seed,
        perturb_batch=args.perturb_batch,
        **_explainer_settings(args, progress),
    )
    progress.close()
    report = result.to_json(seed=args.seed)
    name_of = _class_names(model)
    for entry in report["images"]:
        entry["name"] = name_of(entry["class_ids"][0])
    print(
        f"insertion/deletion: {len(paths)} images ({', '.join(e['name'] for e in report['images'])}), "
        f"{args.steps} steps, {args.baseline} baseline, {args.ranking} ranking, K = {report['settings']['k']}"
    )
    print(format_table(insertion_deletion.TABLE_HEADERS, result.table_rows(seed=args.seed)))
    written = [_write_json(report, out, "deletion.json")]
    if plot_module is not None:
        written.append(plot_module.deletion_curves(report, out / "deletion.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``varrt bench ...`` on its own; errors become one line on stderr and an exit code."""
    parser = argparse.ArgumentParser(prog="varrt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except VarrtError as error:
        print(f"varrt: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
