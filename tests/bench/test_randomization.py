"""Cascading randomization changes exactly the layers it should, step by step."""

import numpy as np
import pytest
from onnx import numpy_helper
from varrt.bench import sanity
from varrt.core.errors import ModelError


def _weights(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_weight_layers_in_graph_order(tiny_model):
    layers = sanity.weight_layers(tiny_model)
    assert [(layer.node, layer.weight, layer.bias) for layer in layers] == [
        ("conv1", "w1", "b1"),
        ("conv2", "w2", "b2"),
        ("fc", "wf", "bf"),
    ]


def test_each_step_changes_only_the_top_layers(tiny_model):
    original = _weights(tiny_model)
    layers = sanity.weight_layers(tiny_model)
    previous = original
    for depth in range(len(layers) + 1):
        current = _weights(sanity.randomize_top_layers(tiny_model, depth, seed=4))
        randomized = {n for layer in layers[len(layers) - depth :] for n in (layer.weight, layer.bias)}
        for name, values in original.items():
            assert current[name].shape == values.shape and current[name].dtype == values.dtype
            changed = not np.array_equal(current[name], values)
            assert changed == (name in randomized), (depth, name)
        # The cascade is nested: layers randomized at the previous step keep their values.
        for name in randomized:
            if not np.array_equal(previous[name], original[name]):
                np.testing.assert_array_equal(current[name], previous[name])
        previous = current
    # The original model is left untouched.
    for name, values in _weights(tiny_model).items():
        np.testing.assert_array_equal(values, original[name])


def test_redrawn_weights_keep_the_layer_scale(tiny_model):
    original = _weights(tiny_model)
    redrawn = _weights(sanity.randomize_top_layers(tiny_model, 3, seed=0))
    for name in ("w1", "w2"):
        assert redrawn[name].std() == pytest.approx(original[name].std(), rel=0.25)
        assert abs(redrawn[name].mean()) < 3 * original[name].std() / np.sqrt(redrawn[name].size) + 1e-3


def test_same_seed_same_weights(tiny_model):
    a = _weights(sanity.randomize_top_layers(tiny_model, 2, seed=1))
    b = _weights(sanity.randomize_top_layers(tiny_model, 2, seed=1))
    c = _weights(sanity.randomize_top_layers(tiny_model, 2, seed=2))
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["wf"], c["wf"])


def test_too_deep_is_an_error(tiny_model):
    with pytest.raises(ModelError):
        sanity.randomize_top_layers(tiny_model, 4)


def test_default_depths_start_at_zero_and_end_at_all():
    depths = sanity.default_depths(50, steps=8)
    assert depths[0] == 0 and depths[-1] == 50 and depths == sorted(set(depths))
    assert sanity.default_depths(3, steps=8) == [0, 1, 2, 3]
