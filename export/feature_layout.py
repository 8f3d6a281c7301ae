"""Which axes of a 4-D feature map are batch, channels, height and width: followed from the image.

Grad-CAM weights a feature map's channels by their mean gradient over its spatial axes, so it must
know which axes those are. A PyTorch model keeps every map [N, C, H, W]; a Keras model converted
with tf2onnx takes [N, H, W, C] and wraps its convolutions in Transposes (or keeps whole blocks
channels-last); ConvNeXt-style blocks permute to channels-last and back. So the axes are not read
off the shape but followed from the image input (whose layout ``varrt.core.layout`` decides):

    Transpose(perm)                    out axis i is in axis perm[i]
    Reshape, Einsum, MatMul, Gemm,     axes are regrouped: unknown
    SpaceToDepth, DepthToSpace... (*)
    any other op with a 4-D output     the axes of its first 4-D input that has them (ONNX's
                                       Conv, pools, normalisations and elementwise ops keep them)

(*) any op in ``_REGROUPING``. A 4-D value none of this reaches (a ViT's tokens reshaped back to a
map) gets the image's layout, which is how varrt always read such maps.
"""

from __future__ import annotations

import onnx_ir as ir

# Ops whose 4-D output does not keep its input's axes one for one.
_REGROUPING = {"Reshape", "Einsum", "MatMul", "Gemm", "SpaceToDepth", "DepthToSpace", "Flatten", "Squeeze",
               "Unsqueeze", "Col2Im", "Gather", "GatherND", "GatherElements", "TopK", "ArgMax", "ArgMin"}


def axis_letters(graph: ir.Graph, image: ir.Value, layout: str) -> dict[ir.Value, str | None]:
    """Every value downstream of ``image``: the letters of its axes ("nchw", "nhwc", ...) when it is
    4-D (``layout`` where they cannot be followed), None otherwise."""
    letters: dict[ir.Value, str | None] = {image: layout}
    for node in graph:  # nodes are in topological order
        inputs = [v for v in node.inputs if v is not None and v in letters]
        if not inputs:
            continue
        known = [found for found in (letters[v] for v in inputs) if found is not None]
        if node.op_type == "Transpose":
            source = letters[inputs[0]]
            attribute = node.attributes.get("perm")
            perm = list(attribute.as_ints()) if attribute is not None else [3, 2, 1, 0]
            out = "".join(source[p] for p in perm) if source is not None and len(perm) == 4 else layout
        else:
            out = known[0] if known and node.op_type not in _REGROUPING else layout
        for value in node.outputs:
            letters[value] = out if value.shape is not None and len(value.shape) == 4 else None
    return letters


def spatial_and_channel_axes(letters: str) -> tuple[int, int, int] | None:
    """(channel, height, width) axes of a map with these axis letters; None unless the batch axis is first."""
    if letters[0] != "n":
        return None
    return letters.index("c"), letters.index("h"), letters.index("w")
