"""One Explainer shared by several threads gives exactly the maps serial calls give."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import testbed as models
from varrt.explainer import Explainer


@pytest.mark.parametrize("method", ["guided_backprop", "gradcam"])
def test_threads_match_serial(method, tmp_path):
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    batches = [models.images(3 + i % 4, seed=i) for i in range(16)]
    with Explainer(str(tmp_path / "tiny.onnx"), method=method, backend="onnxruntime-cpu", batch_size=4,
                   cache_dir=tmp_path / "cache") as explainer:
        serial = [explainer(batch) for batch in batches]
        # Both graph variants (class rule and fed class_ids) are used from the threads at once.
        ids = [np.tile([[5, 0, 2]], (len(b), 1)) for b in batches]
        serial_ids = [explainer(batch, class_ids=i) for batch, i in zip(batches, ids)]

        def work(index: int):
            if index % 2:
                return explainer(batches[index // 2], class_ids=ids[index // 2])
            return explainer(batches[index // 2])

        for _ in range(3):
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(work, range(2 * len(batches))))
            for index, result in enumerate(results):
                expected = (serial_ids if index % 2 else serial)[index // 2]
                for field in ("class_ids", "logits", "attributions", "var"):
                    np.testing.assert_array_equal(getattr(result, field), getattr(expected, field), err_msg=field)


def test_threads_building_the_explainer_graphs_at_once(tmp_path):
    """The first calls from many threads race to build the class_ids variant: built once."""
    onnx.save(models.tiny_cnn(), tmp_path / "tiny.onnx")
    explainer = Explainer(str(tmp_path / "tiny.onnx"), method="gradient", backend="onnxruntime-cpu",
                          cache_dir=tmp_path / "cache")
    images = models.images(2)
    ids = np.array([[1, 2], [3, 4]])
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: explainer(images, class_ids=ids), range(12)))
    for result in results[1:]:
        np.testing.assert_array_equal(result.attributions, results[0].attributions)
    assert len(explainer._backends) == 2
    explainer.close()
