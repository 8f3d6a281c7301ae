"""Models and stand-ins for the benchmark tests: tiny ONNX classifiers, a fake Explainer."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TINY_SIZE = 16
TINY_CLASSES = 6


def _classifier(nodes: list, initializers: list, name: str, size: int, classes: int) -> onnx.ModelProto:
    """An opset-17 graph from ``input`` [batch, 3, size, size] to ``logits``, preset 'none', checked."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"varrt.preset": "none"})
    onnx.checker.check_model(model)
    return model


def tiny_classifier(size: int = TINY_SIZE, classes: int = TINY_CLASSES, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    initializers = [
        init("conv1.w", 8, 3, 3, 3),
        init("conv1.b", 8, scale=0.1),
        init("conv2.w", 8, 8, 3, 3, scale=0.3),
        init("conv2.b", 8, scale=0.1),
        init("fc.w", classes, 8),
        init("fc.b", classes, scale=0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return _classifier(nodes, initializers, "tiny", size, classes)


def color_classifier(size: int = TINY_SIZE) -> onnx.ModelProto:
    """Classes by mean colour of 0..1 pixels: 0 red, 1 green, 2 blue, 3 black (preset 'none').

    Conv 1x1 (identity) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, so photos of solid
    colours are classified with near certainty and every explanation method has a path to follow.
    """
    scale = 10.0
    fc = scale * np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1]], dtype=np.float32)
    bias = np.array([0, 0, 0, 0.5 * scale], dtype=np.float32)
    initializers = [
        numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "mix.w"),
        numpy_helper.from_array(np.zeros(3, dtype=np.float32), "mix.b"),
        numpy_helper.from_array(fc, "fc.w"),
        numpy_helper.from_array(bias, "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "mix.w", "mix.b"], ["mixed"], name="mix"),
        helper.make_node("Relu", ["mixed"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return _classifier(nodes, initializers, "colours", size, 4)


COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "black": (5, 5, 5)}


class FakeExplanation:
    def __init__(self, class_ids, attributions, var):
        self.class_ids = class_ids
        self.attributions = attributions
        self.var = var
        self.logits = None
        self.probabilities = None


class CellOracleExplainer:
    """Stands in for varrt.Explainer: class k's map is the k-th grid cell (or uniform)."""

    calls: list = []

    def __init__(self, model, method="gradient", uniform=False, **options):
        self.method = method
        self.uniform = uniform
        self.options = options
        self.backend_name = "fake"
        CellOracleExplainer.calls.append((method, options))

    def __call__(self, images, class_ids=None):
        from varrt.bench import grids
        from varrt.kernels import var_maps

        n, c, h, w = images.shape
        if class_ids is None:
            class_ids = np.tile(np.arange(4), (n, 1))
        k = class_ids.shape[1]
        masks = np.ones((k, h, w)) if self.uniform else grids.cell_masks((h, w))[:k]
        if self.method in ("gradcam",):
            attributions = np.broadcast_to(masks, (n, k, h, w)).astype(np.float32)
        else:
            attributions = np.broadcast_to(masks[:, None], (n, k, c, h, w)).astype(np.float32) / c
        return FakeExplanation(class_ids, attributions, var_maps(attributions))


class WeightHashExplainer:
    """Stands in for varrt.Explainer in the sanity checks: maps are a function of the weights.

    The same weights always give the same maps, any change of weights gives unrelated ones, so
    the similarity to the original is exactly 1 at depth 0 and drops once a layer is redrawn.
    """

    received_class_ids: list = []

    def __init__(self, model, method="gradient", **options):
        import hashlib

        digest = hashlib.sha256(b"".join(init.raw_data for init in model.graph.initializer)).digest()
        self.rng_seed = int.from_bytes(digest[:8], "little")
        self.method = method

    def __call__(self, images, class_ids=None):
        from varrt.kernels import var_maps

        WeightHashExplainer.received_class_ids.append(None if class_ids is None else class_ids.copy())
        n, c, h, w = images.shape
        if class_ids is None:
            class_ids = np.tile(np.array([3, 1, 0, 2, 5]), (n, 1))
        rng = np.random.default_rng(self.rng_seed)
        shape = (n, class_ids.shape[1], h, w) if self.method == "gradcam" else (n, class_ids.shape[1], c, h, w)
        attributions = rng.normal(size=shape).astype(np.float32)
        return FakeExplanation(class_ids, attributions, var_maps(attributions))
