"""The ``varrt`` command line: ``varrt demo``, ``varrt explain``, ``varrt export`` (and ``bench``).

Every failure varrt can explain is one line on stderr, ``varrt: error: <message>``, and exit
status ``error.exit_code`` (2 for usage errors, 1 otherwise); ``--debug`` adds the traceback.

>>> from varrt.cli import main
>>> main(["demo", "--out", "varrt-demo"])                  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm
from varrt import audit, data, pipeline, triton
from varrt.bench import cli as bench_cli
from varrt.core import defaults
from varrt.core import layout as image_layout
from varrt.core.contract import ATTRIBUTIONS, CLASS_IDS, LOGITS
from varrt.core.errors import UsageError, VarrtError
from varrt.core.options import ExplainOptions
from varrt.core.version import __version__
from varrt.explainer import Explainer
from varrt.export import METHODS, explain_graph
from varrt.export.model_loading import read_model
from varrt.export.passes import TARGETS
from varrt.files import atomic_path
from varrt.images import preprocessing_for
from varrt.overlay import explanation_figure, short_label
from varrt.pipeline import Explained, Outcome
from varrt.ray import RaySettings, explain_paths
from varrt.report import REPORT_NAME, write_report
from varrt.results import RESULTS_NAME, ResultsWriter

_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "cuda", "onnxruntime-cuda", "tensorrt")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Protos past this size cannot be serialized as one message (protobuf's 2 GB limit): weights go
# to an external data file beside the graph.
_EXTERNAL_DATA_BYTES = int(1.8 * 1024**3)
DEMO_OUT = "varrt-demo"
#: What ``--save`` writes beside results.parquet: the full .npz and PNG, VAR maps only, or nothing.
SAVE_CHOICES = ("all", "var", "summary")

Run = Callable[[argparse.Namespace], "int | None"]


# --- helpers shared by the subcommands ------------------------------------------------------------
def check_writable_dir(path: Path) -> None:
    """Raise a VarrtError unless ``path`` is (or can be created as) a writable directory."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VarrtError(f"cannot write to {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VarrtError(f"cannot write to {path}: permission denied on {existing}")


def _collect_images(items: Sequence[str]) -> list[Path]:
    """Image files from the arguments; a directory contributes its image files, sorted."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise VarrtError(f"no image files (png, jpg...) in directory {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise VarrtError(f"no such image file: {path}")
    if not paths:
        raise UsageError("no images given")
    return paths


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """One output name per input: its stem, numbered when two inputs share one (a/x.jpg, b/x.png)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}_{count}")
    return stems


def _read_labels(spec: str | None, model: onnx.ModelProto) -> list[str] | None:
    """Class names from ``--labels FILE`` or ``imagenet``; else ImageNet's if the model says so."""
    if spec is None:
        return pipeline.model_labels(model)
    if spec == "imagenet":
        return list(data.imagenet_labels())
    try:
        return Path(spec).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise VarrtError(f"cannot read labels file {spec}: {error.strerror or error}") from error


# --- explain / demo -------------------------------------------------------------------------------
@dataclass
class ExplainJob:
    """Everything ``varrt explain`` (and ``varrt demo``) needs to run: what to explain with
    (``options``, the record the Explainer keeps too), and the command line's own inputs and outputs."""

    model: Path
    images: list[Path]
    out: Path
    options: ExplainOptions
    preset: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    size: tuple[int, int] | None = None
    labels: str | None = None
    overlays: bool = True
    quiet: bool = False
    save: str = "all"
    ray: RaySettings | None = None  # --ray: run on Ray Data actors instead of in this process

    def __post_init__(self) -> None:
        if self.save not in SAVE_CHOICES:
            raise UsageError(f"--save must be one of {', '.join(SAVE_CHOICES)}, got {self.save!r}")
        if self.save == "var" and not self.options.var:
            raise UsageError("--save var keeps only the VAR maps, but --no-var computes none")


def run_explain(job: ExplainJob, stdout: Any = None) -> list[dict[str, Any]]:
    """Explain every image of ``job``: ``results.parquet`` and, per ``job.save``, per-image files.

    Returns one summary per image (file, outputs, top class); prints a line per image and where
    the outputs are unless ``job.quiet``. The model file is read once and handed on.
    """
    model = read_model(job.model)
    prep = preprocessing_for(model, preset_name=job.preset, mean=job.mean, std=job.std, size=job.size,
                             layout=job.options.method_options.get("layout"))
    labels = _read_labels(job.labels, model)
    # Fail on an unwritable --out before the (slow) graph build and before any output is written;
    # an image that cannot be read becomes its error row instead.
    check_writable_dir(job.out)
    stems = _output_stems(job.images)
    if job.ray is not None:
        backend, rows = explain_paths(job.model, [str(p) for p in job.images], stems, job.options,
                                                prep, labels, job.ray, maps=job.save != "summary")
    else:
        explainer = Explainer.from_options(model, job.options, name=str(job.model))
        backend, rows = explainer.backend_name, _local_rows(job, explainer, prep, labels, stems)
    created = not job.out.exists()
    job.out.mkdir(parents=True, exist_ok=True)
    summaries: list[dict[str, Any]] = []
    try:
        with ResultsWriter(job.out / RESULTS_NAME, _run_record(job, backend, prep.layout)) as results, \
                _progress_bar(len(job.images), job.options.method, job.quiet) as bar:
            for row, image in rows:
                outputs = _write_outputs(job, image) if image is not None else []
                results.add(row)
                summaries.append(_summary(row, outputs))
                bar.update(1)
            _refuse_if_all_failed(summaries)
    except BaseException:
        if created and not any(job.out.iterdir()):
            job.out.rmdir()  # nothing half-written: not even the empty folder
        raise
    write_report(job.out)
    if not job.quiet:
        _print_summaries(job, summaries, backend, stdout if stdout is not None else sys.stdout)
    return summaries


def _progress_bar(total: int, label: str, quiet: bool) -> tqdm:
    """tqdm on stderr; off with --quiet, and (tqdm's ``disable=None``) when stderr is not a terminal."""
    return tqdm(total=total, desc=label, unit="image", file=sys.stderr, disable=True if quiet else None)


def _run_record(job: ExplainJob, backend: str, layout: str) -> dict[str, Any]:
    """The run's settings, kept in results.parquet's metadata."""
    options = job.options
    return {
        "model": str(job.model), "method": options.method, "classes": str(options.classes), "var": options.var,
        "temperature": options.temperature, "tau": options.tau, "var_scale": options.var_scale,
        "method_options": dict(options.method_options), "backend": backend, "save": job.save,
        "images": len(job.images), "varrt_version": __version__, "layout": layout,
    }


def _local_rows(job: ExplainJob, explainer: Explainer, prep: Any, labels: list[str] | None,
                stems: list[str]) -> Iterator[tuple[dict[str, Any], Outcome]]:
    """(results row, outcome) per image, explained in this process, batch by batch."""
    for outcome in pipeline.explain_files(job.images, stems, explainer, prep, labels, job.options.batch_size):
        yield pipeline.result_row(outcome, job.options), outcome


def _refuse_if_all_failed(summaries: list[dict[str, Any]]) -> None:
    """A run that explained nothing is an error (the first image's), not a table of error rows."""
    if summaries and all(summary["error"] for summary in summaries):
        more = f" (and the other {len(summaries) - 1} images)" if len(summaries) > 1 else ""
        raise VarrtError(f"no image explained: {summaries[0]['error']}{more}")


def _write_outputs(job: ExplainJob, image: Outcome) -> list[Path]:
    """Per ``job.save``: ``<stem>.npz`` (and ``<stem>.png`` with overlays), each written atomically."""
    if job.save == "summary" or not isinstance(image, Explained):
        return []
    arrays = {  # the graph's outputs for this image, and what the CLI adds to them
        CLASS_IDS: image.class_ids,
        "class_names": np.array(image.names),
        "probabilities": image.probabilities[image.class_ids].astype(np.float32),
        LOGITS: image.logits.astype(np.float32),
        "layout": np.array(image.layout),  # of the input-space maps: [K, C, H, W] or [K, H, W, C]
    }
    if job.save == "var":
        assert image.var is not None  # ExplainJob refuses --save var with --no-var
        arrays["var"] = audit.pixel_maps(image.var, image.layout).astype(np.float16)
    else:
        arrays[ATTRIBUTIONS] = image.attributions.astype(np.float32)
        if image.var is not None:
            arrays["var"] = image.var.astype(np.float32)
    npz_path = job.out / f"{image.stem}.npz"
    with atomic_path(npz_path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    outputs = [npz_path]
    if job.overlays and job.save == "all":
        method = job.options.method
        figure = explanation_figure(image.pixels, image.attributions, image.var, image.names,
                                    arrays["probabilities"], method=method,
                                    title=f"{Path(image.source).name}: {method}",
                                    layout=image.layout)
        png_path = job.out / f"{image.stem}.png"
        with atomic_path(png_path) as temporary:
            figure.save(temporary, format="PNG")
        outputs.append(png_path)
    return outputs


def _summary(row: dict[str, Any], outputs: list[Path]) -> dict[str, Any]:
    return {
        "image": Path(row["path"]),
        "outputs": outputs,
        "top_class": row.get("predicted_id"),
        "top_name": row.get("predicted_name"),
        "top_probability": row.get("predicted_probability"),
        "error": row.get("error"),
    }


def _print_summaries(job: ExplainJob, summaries: list[dict[str, Any]], backend: str, stdout: Any) -> None:
    for summary in summaries:
        if summary["error"]:
            print(f"{Path(summary['image']).name}: error: {summary['error']}", file=stdout)
            continue
        outputs = ", ".join(p.name for p in summary["outputs"]) or RESULTS_NAME
        print(f"{Path(summary['image']).name}: {short_label(summary['top_name'])} "
              f"(p={summary['top_probability']:.2f}) -> {outputs}", file=stdout)
    kinds = {"all": "explanations (.npz) and overlays (.png)" if job.overlays else "explanations (.npz)",
             "var": "VAR maps (.npz)", "summary": f"rows of {RESULTS_NAME}"}[job.save]
    if job.save != "summary":
        kinds += f", {RESULTS_NAME}"
    kinds += f" and {REPORT_NAME}"
    errors = sum(1 for summary in summaries if summary["error"])
    failed = f", {errors} image{'s' if errors != 1 else ''} not explained (errors in {RESULTS_NAME})" if errors else ""
    method = job.options.method + (" + VAR" if job.options.var else "")
    print(f"varrt: {len(summaries) - errors} {kinds}{failed} from {method} "
          f"on {backend} in {job.out.resolve()}", file=stdout)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given on the command line (absent ones keep the exporter's defaults)."""
    names = ("layer", "steps", "baseline", "samples", "noise", "window", "stride", "mask_size", "keep", "chunk", "seed",
             "lrp_rule", "epsilon", "gamma", "step_batch",
             "mask_batch", "layout")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _run_explain(args: argparse.Namespace) -> int:
    options = ExplainOptions(
        method=args.method,
        classes=args.classes,
        var=not args.no_var,
        temperature=args.temperature,
        tau=args.tau,
        var_scale=args.var_scale,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        method_options=_method_options(args),
    )
    job = ExplainJob(
        model=Path(args.model),
        images=_collect_images(args.images),
        out=Path(args.out),
        options=options,
        preset=args.preset,
        mean=args.mean,
        std=args.std,
        size=_size(args.size),
        labels=args.labels,
        overlays=not args.no_overlays,
        quiet=args.quiet,
        save=args.save,
        ray=_ray_settings(args),
    )
    run_explain(job)
    return 0


def _ray_settings(args: argparse.Namespace) -> RaySettings | None:
    """--ray [ADDRESS] and its sizes; those sizes without --ray are a usage error."""
    if args.ray is None:
        given = [flag for flag, value in (("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor),
                                          ("--gpus-per-actor", args.gpus_per_actor)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: for runs on Ray only (add --ray)")
        return None
    return RaySettings(address=args.ray or None, actors=1 if args.actors is None else args.actors,
                       cpus_per_actor=args.cpus_per_actor,
                       gpus_per_actor=0.0 if args.gpus_per_actor is None else args.gpus_per_actor)


def _size(values: list[int] | None) -> tuple[int, int] | None:
    if not values:
        return None
    if len(values) > 2 or min(values) < 1:
        raise UsageError("--size takes one or two positive integers: SIZE or HEIGHT WIDTH")
    return (values[0], values[-1])


def _run_demo(args: argparse.Namespace) -> int:
    options = ExplainOptions(method=args.method, backend=args.backend, device=args.device, batch_size=args.batch_size)
    job = ExplainJob(model=data.demo_model_path(), images=data.demo_images(), out=Path(args.out), options=options,
                     quiet=args.quiet)
    run_explain(job)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_writable_dir(out)
    path = write_report(out)
    print(f"varrt: wrote {path}")
    return 0


def add_report_parser(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """``varrt report OUT``."""
    parser = subparsers.add_parser(
        "report",
        parents=[parent],
        help="rebuild OUT/index.html from OUT/results.parquet",
        description=(
            "Rebuild the static HTML report of a `varrt explain` run (OUT/index.html, thumbnails in "
            "OUT/thumbs/) from its OUT/results.parquet: the run's summary, then per image the overlay (or "
            "the photo), the predicted class, the explained classes with their probabilities and audit "
            "figures; sortable by column, filterable by class name."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="the output directory of a `varrt explain` run")
    parser.set_defaults(run=_run_report)


# --- export ---------------------------------------------------------------------------------------
def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write an ONNX model atomically; weights go to ``<name>.data`` beside it past 1.8 GB."""
    external = proto.ByteSize() > _EXTERNAL_DATA_BYTES
    with atomic_path(path) as temporary:
        if external:
            onnx.save_model(
                proto,
                str(temporary),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                # Relative to the model file, so the final name (not the temporary's) is used.
                location=f"{path.name}.data",
            )
        else:
            onnx.save_model(proto, str(temporary))


def _run_export(args: argparse.Namespace) -> int:
    triton_target = _triton_target(args)
    if triton_target is not None:
        return _export_triton(args, triton_target)
    out = Path(args.output)
    check_writable_dir(out.parent)
    proto = explain_graph(args.model, method=args.method, **_export_options(args))
    save_model(proto, out)
    outputs = ", ".join(value.name for value in proto.graph.output)
    print(f"varrt: wrote {out} ({args.method}; outputs: {outputs})")
    return 0


def parse_input_shape(text: str) -> tuple[int | str, ...]:
    """``--input-shape`` "1x3x224x224" or "Nx3x224x224": numbers fix a dimension, names keep it dynamic."""
    parts = text.strip().split("x") if text.strip() else []
    dims: list[int | str] = []
    for part in parts:
        if re.fullmatch(r"-?\d+", part):
            dims.append(int(part))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) and part != "x":
            dims.append(part)
        else:
            raise UsageError(f"--input-shape '{text}': expected sizes or names joined by 'x', like 1x3x224x224 "
                             "or Nx3x224x224")
    if not dims:
        raise UsageError(f"--input-shape '{text}': expected sizes or names joined by 'x', like 1x3x224x224")
    return tuple(dims)


def _export_options(args: argparse.Namespace) -> dict[str, Any]:
    """explain_graph's keyword arguments from the command line."""
    options = _method_options(args)
    if args.classes is not None:
        options["classes"] = args.classes  # parsed by the exporter (varrt.core.classes)
    if args.batch is not None:
        options["batch"] = args.batch
    if args.input_shape is not None:
        options["input_shape"] = parse_input_shape(args.input_shape)
    options["target"] = args.target
    if args.var:
        options.update(var=True, temperature=args.temperature, tau=args.tau, var_scale=args.var_scale)
    return options


@dataclass
class _TritonTarget:
    """Where and how ``varrt export --triton-repo`` writes its model (options checked)."""

    repository: Path
    name: str
    max_batch_size: int
    platform: str
    device: str
    force: bool


_TRITON_ONLY = ("name", "max_batch_size", "triton_platform", "triton_device")


def _triton_target(args: argparse.Namespace) -> _TritonTarget | None:
    """The checked Triton options, None for ``-o``; every refusal comes before the (slow) export."""
    if args.triton_repo is None:
        given = [f"--{key.replace('_', '-')}" for key in _TRITON_ONLY if getattr(args, key) is not None]
        given += ["--force"] if args.force else []
        if given:
            raise UsageError(f"{', '.join(given)}: Triton options, for --triton-repo DIR only")
        return None
    if args.name is None:
        raise UsageError("--triton-repo needs --name NAME, the model's name in the repository")
    target = _TritonTarget(
        repository=Path(args.triton_repo),
        name=args.name,
        max_batch_size=triton.DEFAULT_MAX_BATCH_SIZE if args.max_batch_size is None else args.max_batch_size,
        platform=args.triton_platform or "onnxruntime",
        device=args.triton_device or "gpu",
        force=args.force,
    )
    triton.check_options(target.name, target.max_batch_size, target.platform, target.device)
    if args.batch is not None and target.max_batch_size > 0:
        raise UsageError(f"--batch {args.batch} fixes the batch axis, but Triton batches requests itself "
                         f"(--max-batch-size {target.max_batch_size}): drop --batch, or pass --max-batch-size 0 "
                         "to serve the fixed batch as it is")
    check_writable_dir(target.repository)
    triton.check_destination(target.repository, target.name, target.force)
    return target


def _export_triton(args: argparse.Namespace, target: _TritonTarget) -> int:
    """``varrt export --triton-repo DIR --name NAME``: DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx."""
    proto = explain_graph(args.model, method=args.method, **_export_options(args))
    classes = f", classes {args.classes}" if args.classes else ", class_ids fed by the client"
    config = triton.model_config(
        proto, target.name, max_batch_size=target.max_batch_size, platform=target.platform, device=target.device,
        comment=f"varrt {__version__}: explanation graph of {Path(args.model).name} ({args.method}{classes})",
    )
    folder = triton.write_repository(target.repository, target.name, config, lambda path: save_model(proto, path),
                                     force=target.force)
    outputs = ", ".join(value.name for value in proto.graph.output)
    print(f"varrt: wrote Triton model {folder} ({triton.CONFIG_NAME}, {triton.VERSION}/{triton.MODEL_FILE}; "
          f"{args.method}; outputs: {outputs})")
    return 0


# --- parsers --------------------------------------------------------------------------------------
def _common_parent() -> argparse.ArgumentParser:
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value otherwise.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of errors"
    )
    return parent


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method options (defaults: the exporter's)")
    group.add_argument(
        "--layer",
        help="CAM methods: the feature map to use (a value name; default: the last 4-D one); tokens [N, T, C] "
        "and [N, H, W, C] maps are put on the patch grid",
    )
    group.add_argument("--steps", type=int, help="integrated_gradients: interpolation steps (default 32)")
    group.add_argument("--baseline", type=float, help="integrated_gradients, gradient_shap, deeplift, occlusion: "
                       "baseline pixel value (default 0.0)")
    group.add_argument("--samples", type=int, help="smoothgrad, gradient_shap: random samples per image (default 16); "
                       "rise: masks (default 2000)")
    group.add_argument("--noise", type=float, help="smoothgrad, gradient_shap: noise std as a fraction of the input "
                       "range (default 0.15)")
    group.add_argument("--window", type=int, help="occlusion: side of the square window, pixels (default 16)")
    group.add_argument("--stride", type=int, help="occlusion: step between windows, pixels (default 8)")
    group.add_argument("--mask-size", type=int, help="rise: cells per side of the random grids (default 7)")
    group.add_argument("--keep", type=float, help="rise: probability that a cell is kept (default 0.5)")
    group.add_argument("--chunk", type=int,
                       help="occlusion, rise: masked copies per forward inside the graph (memory; default 32)")
    group.add_argument("--seed", type=int, help="rise, smoothgrad: random seed of the masks or noise (default 0)")
    group.add_argument("--lrp-rule", choices=("epsilon", "gamma", "zplus"),
                       help="lrp: the rule on layers with weights (default epsilon; Captum's)")
    group.add_argument("--epsilon", type=float, help="lrp: the epsilon rule's stabiliser (default 1e-9)")
    group.add_argument("--gamma", type=float, help="lrp: the gamma rule's factor (default 0.25)")
    group.add_argument("--step-batch", type=int, help="integrated_gradients, smoothgrad, gradient_shap: run this many "
                       "steps or samples at a time, adding the runs (memory bound, as Captum's internal_batch_size; "
                       "varrt export: the graph takes them as an input, alphas or sample_weights)")
    group.add_argument("--mask-batch", type=int, metavar="B",
                       help="scorecam: masked copies of each image per forward (default 32; 1 when the model's "
                       "batch axis is fixed); memory grows with N x B")
    parser.add_argument("--layout", choices=image_layout.LAYOUTS,
                        help="where the model's image input keeps its channels: nchw [N, C, H, W] or nhwc "
                        "[N, H, W, C] (default: nhwc when the last dimension is 1 or 3 and the second is not)")


def _add_var_options(parser: Any) -> None:
    """--temperature, --tau, --var-scale (on a parser or an argument group)."""
    parser.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                        help=f"VAR softmax temperature T (default {defaults.TEMPERATURE:g})")
    parser.add_argument("--tau", type=float, default=defaults.TAU,
                        help=f"VAR threshold tau on M_k - 1/K (default {defaults.TAU:g})")
    parser.add_argument("--var-scale", choices=defaults.VAR_SCALES, default=defaults.VAR_SCALE,
                        help="what T multiplies: 'none' = raw |A| (the paper; default), 'max' = |A| divided by each "
                        "image's largest |A| (units-free; see README)")


def _method_help(default: str | None) -> str:
    suffix = f" (default {default})" if default else ""
    return f"attribution method: {', '.join(METHODS)}{suffix}"


def _add_runtime_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--backend, --device, --batch-size: where and in what batches explain and demo run."""
    parser.add_argument(
        "--backend",
        default="auto",
        choices=_BACKENDS,
        metavar="NAME",
        help=f"runtime backend: {', '.join(_BACKENDS)} (default auto)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N",
                        help=f"images read and explained per batch (default {batch_size}); the onnxruntime-cpu "
                        "backend still runs its graph one image at a time, which is faster per image there")


def add_explain_parser(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """``varrt explain MODEL IMAGES...``."""
    parser = subparsers.add_parser(
        "explain",
        parents=[parent],
        help="explain an ONNX classifier's predictions on images (results.parquet, npz, PNG overlays)",
        description=(
            "Explain an ONNX image classifier on images: for each image, attributions for K classes "
            "and their VAR maps go to OUT/<name>.npz (class_ids, class_names, probabilities, logits, "
            "attributions, var) and OUT/<name>.png (the photo, then per class the base map and the "
            "VAR map side by side), and OUT/results.parquet one row per image (classes, probabilities, "
            "logits, audit figures of the VAR maps; schema in README). Input-space maps are shown as the sum "
            "of absolute values over channels, scaled by their 99th percentile."
        ),
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX classifier (input [N, C, H, W] or [N, H, W, C])")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files, or directories of them")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--method", "-m", default=defaults.METHOD, help=_method_help(defaults.METHOD))
    parser.add_argument(
        "--classes",
        default=defaults.CLASSES,
        metavar="SPEC",
        help="classes to explain per image: topK, topK+min (K most likely + least likely), "
        f"K (= topK) or class ids 281,285 (default {defaults.CLASSES})",
    )
    _add_runtime_options(parser, batch_size=8)
    prep = parser.add_argument_group(
        "preprocessing (default: the model's metadata, else imagenet; resize shorter side to size/0.875, centre crop)"
    )
    prep.add_argument(
        "--preset",
        choices=("imagenet", "inception", "none"),
        help="pixel normalisation: imagenet mean/std, inception (x-0.5)/0.5, none (0..1 pixels)",
    )
    prep.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean on 0..1 pixels")
    prep.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std on 0..1 pixels")
    prep.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar="PX",
        help="input size SIZE or HEIGHT WIDTH, for models whose input size is not fixed (default 224)",
    )
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line (line i = class i), or 'imagenet' (default: ImageNet's when "
        "the model's metadata says so, else class ids)",
    )
    var = parser.add_argument_group("VAR")
    var.add_argument("--no-var", action="store_true", help="skip VAR: base attributions only")
    _add_var_options(var)
    parser.add_argument("--no-overlays", action="store_true", help="write only the .npz files, no PNGs")
    parser.add_argument(
        "--save",
        choices=SAVE_CHOICES,
        default="all",
        help="what to write besides OUT/results.parquet (one row per image, always written): all = per image "
        ".npz and .png (default); var = per image .npz with the VAR maps summed over channels, [K, H, W] "
        "float16, no attributions or PNG; summary = nothing else",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    _add_method_options(parser)
    _add_ray_options(parser)
    parser.set_defaults(run=_run_explain)


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS], --actors, --cpus-per-actor, --gpus-per-actor (the `ray` extra)."""
    group = parser.add_argument_group("Ray (pip install 'varrt[ray]'; same files as without --ray)")
    group.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="explain on Ray Data actors: ADDRESS auto (this machine's cluster), ray://HOST:PORT or "
                       "HOST:PORT; none: a local Ray started in this process")
    group.add_argument("--actors", type=int, metavar="N", help="actors, each with its own Explainer (default 1)")
    group.add_argument("--cpus-per-actor", type=int, metavar="C",
                       help="CPUs each actor reserves, and its ONNX Runtime threads (default: the cluster's CPUs "
                       "shared out among the actors, at most one machine's)")
    group.add_argument("--gpus-per-actor", type=float, metavar="G", help="GPUs each actor reserves (default 0)")


def add_demo_parser(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """``varrt demo``."""
    parser = subparsers.add_parser(
        "demo",
        parents=[parent],
        help="explain the bundled photos with the bundled EfficientNet-Lite0 (no download)",
        description=(
            "Run varrt end to end on what ships with it: the EfficientNet-Lite0 ImageNet model and "
            "four photos (a cat, a coffee cup, a rocket, an astronaut), guided backprop + VAR for the 4 most "
            "likely classes and the least likely one. Writes <photo>.npz, <photo>.png and results.parquet to --out "
            "and prints each photo's top class and where the files are."
        ),
    )
    parser.add_argument("--out", "-o", default=DEMO_OUT, metavar="DIR", help=f"output directory (default ./{DEMO_OUT})")
    parser.add_argument("--method", "-m", default=defaults.METHOD, help=_method_help(defaults.METHOD))
    _add_runtime_options(parser, batch_size=4)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(run=_run_demo)


def add_export_parser(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """``varrt export MODEL (-o OUT | --triton-repo DIR --name NAME) --method M``."""
    parser = subparsers.add_parser(
        "export",
        parents=[parent],
        help="write an explanation graph: the model plus per-class attributions (ONNX)",
        description=(
            "Rewrite an ONNX classifier into an explanation graph. Inputs: the model's own, plus "
            "class_ids int64 [N, K]. Outputs: logits [N, classes], attributions [N, K, C, H, W] "
            "([N, K, H, W, C] for channels-last models, [N, K, H, W] for CAM methods) and, with --var, "
            "var_attributions. The graph uses standard "
            "ONNX ops only, for ONNX Runtime and TensorRT. With --triton-repo DIR --name NAME it is written "
            "as a Triton Inference Server model, with a config.pbtxt read off the graph's inputs and outputs."
        ),
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX classifier")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", "-o", metavar="OUT.onnx", help="where to write the graph")
    where.add_argument("--triton-repo", metavar="DIR",
                       help="write a Triton Inference Server model instead: DIR/NAME/config.pbtxt and "
                       "DIR/NAME/1/model.onnx (the graph), served by Triton's ONNX Runtime backend")
    parser.add_argument("--method", "-m", required=True, help=_method_help(None))
    parser.add_argument(
        "--classes",
        metavar="SPEC",
        help="choose classes inside the graph: topK, topK+min, K or ids 281,285 (default: fed through "
        "the class_ids input)",
    )
    parser.add_argument("--var", action="store_true", help="also output var_attributions (VAR inside the graph)")
    _add_var_options(parser)
    parser.add_argument("--batch", type=int, metavar="B",
                        help="fix the image batch axis to B (default: the model's, usually dynamic). 1 is the "
                        "graph for ONNX Runtime on CPUs, one image per run (with --target onnxruntime-cpu)")
    parser.add_argument("--input-shape", metavar="NxCxHxW",
                        help="fix the image input's dimensions, e.g. 1x3x224x224; a dimension given by name "
                        "(Nx3x224x224) stays dynamic. Needed for models exported with dynamic height and width")
    parser.add_argument("--target", choices=list(TARGETS), default="portable",
                        help="the runtime the graph is tuned for (default: portable, for TensorRT, CUDA or any "
                        "runtime; onnxruntime-cpu adds the graph passes measured on ONNX Runtime's CPU provider)")
    _add_method_options(parser)
    _add_triton_options(parser)
    parser.set_defaults(run=_run_export)


def _add_triton_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``varrt export --triton-repo DIR``."""
    group = parser.add_argument_group("Triton model repository (with --triton-repo)")
    group.add_argument("--name", help="the model's name: its folder in DIR and the config's name (required)")
    group.add_argument("--max-batch-size", type=int, metavar="B",
                       help=f"Triton's max_batch_size (default {triton.DEFAULT_MAX_BATCH_SIZE}), with dynamic "
                       "batching; 0: Triton does not batch and dims include the batch axis (the only choice "
                       "with --batch)")
    group.add_argument("--triton-platform", choices=triton.PLATFORMS,
                       help="onnxruntime (default): ONNX Runtime's own providers; tensorrt: ONNX Runtime with "
                       "its TensorRT execution accelerator, FP32")
    group.add_argument("--triton-device", choices=triton.DEVICES,
                       help="the instance group's kind: gpu (default, KIND_GPU) or cpu (KIND_CPU)")
    group.add_argument("--force", action="store_true",
                       help="replace an existing, non-empty DIR/NAME folder (all its versions)")


# The subcommands, in help order. Each entry adds one subparser that sets `run` (a function of
# the parsed arguments returning an exit status); adding a subcommand is one line here.
SUBCOMMANDS: tuple[Callable[[Any, argparse.ArgumentParser], object], ...] = (
    add_demo_parser,
    add_explain_parser,
    add_export_parser,
    add_report_parser,
    bench_cli.add_parser,  # `varrt bench`: the one way the runtime reaches the benchmarks
)


class _Parser(argparse.ArgumentParser):
    """argparse with varrt's one-line errors (argparse prints the usage block first)."""

    def error(self, message: str) -> Any:
        print(f"varrt: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full ``varrt`` argument parser."""
    parser = _Parser(
        prog="varrt",
        description=(
            "Class-relevant saliency maps (VAR) for any ONNX image classifier, on ONNX Runtime or "
            "TensorRT, without PyTorch. Start with `varrt demo`."
        ),
        epilog="Run `varrt COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"varrt {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parent = _common_parent()
    for register in SUBCOMMANDS:
        register(subparsers, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varrt`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Run | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.debug)
    try:
        status = run(args)
        return 0 if status is None else int(status)
    except VarrtError as error:
        return _report(error, str(error), error.exit_code, args.debug)
    except KeyboardInterrupt:
        print("varrt: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # Disk full, permission denied on --out...: a user problem, reported like one.
        where = f": {error.filename}" if error.filename else ""
        return _report(error, f"{error.strerror or error}{where}", 1, args.debug)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        message = f"internal error ({type(error).__name__}: {first}); run with --debug for the traceback"
        return _report(error, message, 1, args.debug)


class _OneLine(logging.Filter):
    """Warnings stay one line (no attached traceback) unless --debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _configure_logging(debug: bool) -> None:
    """varrt's warnings (a rebuilt cache entry...) as plain lines on stderr; other libraries'
    (onnx_ir logs shape inference failures with a traceback; varrt reports what matters itself)
    only with --debug."""
    root = logging.getLogger()
    if root.handlers:  # configured by whoever embeds main(); leave it alone
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not debug:
        handler.addFilter(_OneLine())
        logging.getLogger("onnx_ir").setLevel(logging.CRITICAL)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def _report(error: BaseException, message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    print(f"varrt: error: {first_line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
