"""Stand-ins for varrt.Explainer in the metric tests (maps known by construction, so a metric's
score is known), and the colours of the colour classifier's photos. The tiny models themselves
are in tests/testbed.py."""

import numpy as np

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
