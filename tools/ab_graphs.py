"""Time explanation graphs against each other (and the PyTorch + Captum flow) in alternating rounds.

For A/B checks of the exporter across commits: export the same model with each version, then

    python tools/ab_graphs.py old.onnx new.onnx --rounds 6 --calls 6 --captum

Each round runs every flow ``calls`` times after a pause and one untimed call, in turn, so the
host's drift (this VM's speed swings by 2x within seconds) hits all flows alike; the per-round
ratios are reported with their median. A graph flow is one ONNX Runtime run (2 threads, the CPU
backend's session options) plus VAR in NumPy, on one 224x224 image; ``--captum`` adds
EfficientNet-Lite0 in PyTorch with Captum's guided backprop, K = 5 (varrt.bench.speed_reference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from varrt.backends.onnxruntime import cpu_session_options
from varrt.kernels import var_maps


def graph_flow(path: str, threads: int, image: np.ndarray) -> Callable[[], object]:
    session = ort.InferenceSession(path, cpu_session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def call() -> object:
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: image})))
        return var_maps(outputs["attributions"])

    return call


def captum_flow(threads: int, image: np.ndarray) -> Callable[[], object]:
    import torch
    from varrt.bench import speed_reference as ref

    torch.set_num_threads(threads)
    model = ref.load_torch_model()
    attribute = ref.captum_attributor(model, "guided_backprop")
    x = torch.from_numpy(image)
    return lambda: ref.reference_call(model, attribute, x, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--captum", action="store_true")
    args = parser.parse_args()
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    flows = {path: graph_flow(path, args.threads, image) for path in args.graphs}
    if args.captum:
        flows["torch+captum"] = captum_flow(args.threads, image)
    medians: dict[str, list[float]] = {name: [] for name in flows}
    for _ in range(args.rounds):
        for name, call in flows.items():
            time.sleep(0.5)
            call()
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    first = args.graphs[0]
    for name, values in medians.items():
        line = f"{name}: median {1e3 * statistics.median(values):.1f} ms per call, rounds " + \
               " ".join(f"{1e3 * v:.0f}" for v in values)
        if name != first:
            ratios = [v / f for v, f in zip(values, medians[first])]
            line += f"; / {first}: " + " ".join(f"{r:.3f}" for r in ratios)
            line += f" (median {statistics.median(ratios):.3f})"
        print(line)
    if args.captum:
        for name in args.graphs:
            ratios = [c / v for c, v in zip(medians["torch+captum"], medians[name])]
            print(f"torch+captum / {name}: " + " ".join(f"{r:.2f}" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f}x)")


if __name__ == "__main__":
    main()
