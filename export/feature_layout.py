"""Which axes of a 4-D feature map are batch, channels, height and width: followed from the image.

Grad-CAM weights a feature map's channels by their mean gradient over its spatial axes, so it must
know which axes those are. A PyTorch model keeps every map [N, C, H, W]; a Keras model converted
with tf2onnx takes [N, H, W, C] and wraps its convolutions in Transposes (or keeps whole blocks
channels-last); ConvNeXt-style blocks permute to channels-last and back. So the axes are not read
off the shape but followed from the image input (whose layout ``varrt.core.layout`` decides):

    Transpose(perm)                    out axis i is in axis perm[i]
    Reshape, Einsum, MatMul, Gemm,     axes are regrouped: unknown (``UNKNOWN``)
    SpaceToDepth, DepthToSpace... (*)
    any other op with a 4-D output     the axes of its first 4-D input whose axes are known
                                       (ONNX's Conv, pools, normalisations and elementwise ops keep them)

(*) any op in ``_REGROUPING``. A 4-D map whose axes are unknown (a ViT's tokens reshaped back to a
map) is read in the image's layout, which is how varrt always read such maps.

The same walk checks the layout: ONNX's Conv, pools and normalisations take channels on axis 1, so
an image layout that puts another axis there (a wrong ``--layout``) is refused, not explained.
"""

from __future__ import annotations

import onnx_ir as ir
from varrt.core import layout as image_layout
from varrt.core.errors import UsageError

UNKNOWN = "????"

# Ops whose 4-D output does not keep its input's axes one for one.
_REGROUPING = {"Reshape", "Einsum", "MatMul", "Gemm", "SpaceToDepth", "DepthToSpace", "Flatten", "Squeeze",
               "Unsqueeze", "Col2Im", "Gather", "GatherND", "GatherElements", "TopK", "ArgMax", "ArgMin"}
# Ops that read axis 1 of their (first) input as channels.
_CHANNELS_ON_AXIS_1 = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
                       "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
                       "InstanceNormalization", "LRN", "GroupNormalization", "MaxRoiPool", "DeformConv"}


def axis_letters(graph: ir.Graph, image: ir.Value, layout: str) -> dict[ir.Value, str | None]:
    """Every value downstream of ``image``: the letters of its axes ("nchw", "nhwc", ...) when it is
    4-D (``UNKNOWN`` where they cannot be followed), None otherwise. Raises a UsageError when an op
    that takes channels on axis 1 gets a map whose axis 1 is not the image's channels."""
    letters: dict[ir.Value, str | None] = {image: layout if image.shape is not None and len(image.shape) == 4
                                           else None}
    for node in graph:  # nodes are in topological order
        inputs = [v for v in node.inputs if v is not None and v in letters]
        if not inputs:
            continue
        known = [found for found in (letters[v] for v in inputs) if found not in (None, UNKNOWN)]
        if node.op_type == "Transpose":
            source = letters[inputs[0]]
            attribute = node.attributes.get("perm")
            perm = list(attribute.as_ints()) if attribute is not None else [3, 2, 1, 0]
            follows = source not in (None, UNKNOWN) and len(perm) == 4
            out = "".join(source[p] for p in perm) if follows else UNKNOWN  # type: ignore[index]
        else:
            out = known[0] if known and node.op_type not in _REGROUPING else UNKNOWN
        if node.op_type in _CHANNELS_ON_AXIS_1 and node.inputs[0] is not None:
            _check_channels_on_axis_1(node, letters.get(node.inputs[0]), layout)
        for value in node.outputs:
            letters[value] = out if value.shape is not None and len(value.shape) == 4 else None
    return letters


def _check_channels_on_axis_1(node: ir.Node, letters: str | None, layout: str) -> None:
    if letters in (None, UNKNOWN) or letters[1] == "c":
        return
    names = {"n": "batch", "h": "height", "w": "width"}
    other = image_layout.NHWC if layout == image_layout.NCHW else image_layout.NCHW
    raise UsageError(f"{node.op_type} node '{node.name}' takes channels on axis 1 of its input, which is the image's "
                     f"{names[letters[1]]} if the image is {image_layout.describe(layout)}: "
                     f"its layout must be {other} (pass --layout {other})")


def spatial_and_channel_axes(letters: str) -> tuple[int, int, int] | None:
    """(channel, height, width) axes of a map with these axis letters; None unless the batch axis is first."""
    if letters[0] != "n":
        return None
    return letters.index("c"), letters.index("h"), letters.index("w")
