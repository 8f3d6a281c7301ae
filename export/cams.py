"""Class activation maps: one feature map, one weighting per method, one upsampling.

As in pytorch-grad-cam, the pipeline is shared and each CAM overrides one step: how the feature map
A [N, C, h, w] is weighted. Gradient CAMs read the cotangent G = d logit_k / d A [K, N, C, h, w]
(one backward for the K classes); ``scorecam`` is forward-only. Then, for every method,

    cam_k = ReLU(sum_c weights_k * A)            [K, N, h, w]
    up_k  = bilinear upsample of cam_k           [K, N, H, W]  (half-pixel centres, as cv2.resize)

pytorch-grad-cam then rescales each map to [0, 1] (``scale_cam_image``); varrt keeps the
unnormalised map, so VAR sees its scale, and a min-max rescale of varrt's map is the library's map.

Feature maps from transformers are tokens: [N, 1 + h*w, C] with a class token, [N, h*w, C], or
Swin's [N, h, w, C]. They are put on the patch grid [N, C, h, w] inside the graph (what
pytorch-grad-cam's ``reshape_transform`` does by hand), with h:w = H:W of the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
from varrt.core import layout as image_layout
from varrt.core.errors import ModelError, UsageError
from varrt.export.autodiff import backward
from varrt.export.emitter import Emitter
from varrt.export.feature_layout import UNKNOWN, axis_letters, spatial_and_channel_axes
from varrt.export.rules.context import Context
from varrt.export.rules.separable import probe_matrix, separable_vjp

DEFAULT_MASK_BATCH = 32  # scorecam: masked copies of each image per forward (dynamic batch)


# -- the one step each gradient CAM overrides: weights from the feature map A and its gradient G ---
# A: [N, C, h, w]; G: [K, N, C, h, w]. The weights broadcast against G: per channel [K, N, C, 1, 1]
# or per position [K, N, C, h, w].
def _gradcam(em: Emitter, a: ir.Value, g: ir.Value) -> ir.Value:
    return em.reduce_mean(g, [3, 4])


def _gradcam_plus_plus(em: Emitter, a: ir.Value, g: ir.Value) -> ir.Value:
    # Chattopadhyay et al., eq. 19 with exp(logit) left out, as pytorch-grad-cam computes it:
    # alpha = G^2 / (2 G^2 + sum(A) G^3 + 1e-6), weights = sum over positions of ReLU(G) alpha.
    # pytorch-grad-cam also zeroes alpha where G == 0; ReLU(G) is 0 there already.
    g2 = em.Mul(g, g)
    denominator = em.Add(em.Add(em.Mul(em.scalar(2.0, like=g), g2), em.Mul(em.reduce_sum(a, [2, 3]), em.Mul(g2, g))),
                         em.scalar(1e-6, like=g))
    return em.reduce_sum(em.Mul(em.Relu(g), em.Div(g2, denominator)), [3, 4])


def _xgradcam(em: Emitter, a: ir.Value, g: ir.Value) -> ir.Value:
    # Fu et al.: sum over positions of G * A / (sum of A + 1e-7)
    total = em.Add(em.reduce_sum(a, [2, 3]), em.scalar(1e-7, like=a))
    return em.reduce_sum(em.Div(em.Mul(g, a), total), [3, 4])


def _layercam(em: Emitter, a: ir.Value, g: ir.Value) -> ir.Value:
    return em.Relu(g)  # Jiang et al.: per position


def _hirescam(em: Emitter, a: ir.Value, g: ir.Value) -> ir.Value:
    return g  # Draelos & Carin: the gradient itself, per position


GRADIENT_WEIGHTS: dict[str, Callable[[Emitter, ir.Value, ir.Value], ir.Value]] = {
    "gradcam": _gradcam,
    "gradcam_plus_plus": _gradcam_plus_plus,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}
CAMS = (*GRADIENT_WEIGHTS, "scorecam")


def class_activation_map(em: Emitter, graph: ir.Graph, kind: str, *, image: ir.Value, logits: ir.Value,
                         num_classes: int, seed: ir.Value, layer: str | None, mask_batch: int | None,
                         layout: str = image_layout.NCHW) -> ir.Value:
    """[K, N, H, W]: the CAM ``kind`` of the classes in ``seed`` ([K, N, classes], one-hot; ``logits``
    [N, classes]) at ``layer`` (default: the last spatial feature map from ``image`` to ``logits``);
    ``layout`` is the image's (``varrt.core.layout``)."""
    value, letters = feature_map(graph, image, logits, layer, layout)
    height, width = _image_size(image, layout)
    to_grid, grid = _grid_transform(em, value, letters, height, width)
    feature = to_grid(value, 0)
    if kind == "scorecam":
        weights = _scorecam_weights(em, graph, image, logits, num_classes, feature, grid, seed, mask_batch, layout)
    else:
        grad = to_grid(backward(em, {logits: seed}, [value])[0], 1)  # [K, N, C, h, w]
        weights = GRADIENT_WEIGHTS[kind](em, feature, grad)
    cam = em.Relu(em.reduce_sum(em.Mul(weights, feature), [2], keepdims=False))  # [K, N, h, w]
    return _upsample(em, cam, grid[1:], (height, width), "half_pixel")


# -- scorecam ------------------------------------------------------------------------------------
def _scorecam_weights(em: Emitter, graph: ir.Graph, image: ir.Value, logits: ir.Value, num_classes: int,
                      feature: ir.Value, grid: tuple[int, int, int], seed: ir.Value,
                      mask_batch: int | None, layout: str) -> ir.Value:
    """[K, N, C, 1, 1]: softmax over channels of the class's logit for the image masked by each
    channel of A, upsampled (bilinear, corners aligned, as torch's UpsamplingBilinear2d) and rescaled
    to [0, 1] (Wang et al.; pytorch-grad-cam's ScoreCAM).

    The C masked copies of each image run through a copy of the model inside one Loop, ``mask_batch``
    per image and iteration (the chunk count is static, as TensorRT wants of a Loop's scan outputs;
    the last chunk is padded with all-zero masks whose scores are dropped). The masks are made per
    chunk, so memory grows with N * mask_batch, not with N * C.
    """
    batch = (image.shape or [None])[0]
    if mask_batch is None:
        mask_batch = 1 if isinstance(batch, int) else DEFAULT_MASK_BATCH
    if isinstance(batch, int) and mask_batch != 1:
        raise UsageError(f"scorecam: the model's batch axis is fixed to {batch}, so each forward takes one masked "
                         f"copy per image: leave --mask-batch out (or pass 1), or export the model with a dynamic "
                         "batch axis")
    channels, h, w = grid
    chunks = math.ceil(channels / mask_batch)
    padded = em.pad(feature, [0, 0, 0, 0, 0, chunks * mask_batch - channels, 0, 0])

    body, carried = _chunk_body(em, graph, image, logits, num_classes, padded, (h, w), mask_batch, layout)
    trips = em.const(np.array(chunks, np.int64))
    true = em.const(np.array(True))
    stacked = em.op_multi("Loop", [trips, true, *carried], len(carried) + 1, body=body)[-1]  # [chunks, N, B, classes]
    per_image = em.Reshape(em.Transpose(stacked, perm=[1, 0, 2, 3]), em.ints([0, chunks * mask_batch, -1]))
    per_channel = em.slice(per_image, [0], [channels], [1])  # [N, C, classes]
    # The K classes' scores by a MatMul with the one-hot seed: exact (each sum has one nonzero term).
    class_scores = em.MatMul(per_channel, em.Transpose(seed, perm=[1, 2, 0]))  # [N, C, K]
    softmax = em.Softmax(em.Transpose(class_scores, perm=[2, 0, 1]), axis=-1)  # [K, N, C]
    return em.unsqueeze(softmax, [3, 4])


def _chunk_body(em: Emitter, graph: ir.Graph, image: ir.Value, logits: ir.Value, num_classes: int,
                padded: ir.Value, grid: tuple[int, int], mask_batch: int,
                layout: str) -> tuple[ir.Graph, list[ir.Value]]:
    """The Loop body: chunk i of the feature map's channels as masks, the image masked by each, the
    model's logits for them [N, B, classes]; and the loop-carried initial values it needs."""
    height, width = _image_size(image, layout)
    body = ir.Graph([], [], nodes=[], name="varrt_scorecam_chunk")
    step = ir.Value(name="varrt_scorecam_chunk_index", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    keep_going = ir.Value(name="varrt_scorecam_cond_in", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    body.inputs.extend([step, keep_going])
    inner = Emitter(body, em.opset, prefix="varrt_scorecam")
    picks = inner.Add(inner.Mul(step, em.const(np.array(mask_batch, np.int64))),
                      em.const(np.arange(mask_batch, dtype=np.int64)))
    maps = _upsample(inner, inner.Gather(padded, picks, axis=1), grid, (height, width), "align_corners")
    low = inner.reduce("ReduceMin", maps, [2, 3])
    span = inner.Add(inner.Sub(inner.reduce("ReduceMax", maps, [2, 3]), low), em.scalar(1e-8, like=image))
    masks = inner.Div(inner.Sub(maps, low), span)  # [N, B, H, W]
    # [N, B, Cin, H, W] (or [N, B, H, W, Cin]): each copy's channels masked alike
    masked = inner.Mul(inner.unsqueeze(image, [1]),
                       inner.unsqueeze(masks, [1 + image_layout.channel_axis(layout, 4)]))
    copies = inner.Reshape(masked, inner.Concat(em.ints([-1]), inner.shape(image, 1), axis=0))
    scores = _copy_forward(inner, graph, image, logits, copies)  # [N*B, classes]
    chunk_scores = inner.Reshape(scores, em.ints([-1, mask_batch, num_classes]))
    done = inner.Identity(keep_going)
    done.type, chunk_scores.type = keep_going.type, image.type
    body.outputs.append(done)
    carried = []
    if em.opset < 11:  # Loop-1 needs a loop-carried value: an unused scalar
        unused = ir.Value(name="varrt_scorecam_unused_in", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
        body.inputs.append(unused)
        out = inner.Identity(unused)
        out.type = unused.type
        body.outputs.append(out)
        carried.append(em.const(np.array(0, np.int64)))
    body.outputs.append(chunk_scores)
    for name, value in list(body.initializers.items()):  # constants live in the outer graph (TensorRT)
        body.initializers.pop(name)
        graph.register_initializer(value)
    for i, node in enumerate(body):  # names are unique across a model and its subgraphs
        node.name = f"varrt_scorecam_node_{i}"
        for j, value in enumerate(node.outputs):
            value.name = f"varrt_scorecam_{i}_{j}"
    return body, carried


def _copy_forward(em: Emitter, graph: ir.Graph, image: ir.Value, logits: ir.Value, batch: ir.Value) -> ir.Value:
    """A copy of the model's nodes from ``image`` to ``logits`` reading ``batch`` instead, emitted by
    ``em``; nodes that do not depend on the image (weights, shape constants) are shared."""
    path = _descendants(image) & _ancestors(logits)
    copied: dict[ir.Value, ir.Value] = {image: batch}
    for node in graph:
        if not any(v in path for v in node.outputs):
            continue
        if any(isinstance(attr.value, ir.Graph) or attr.type in (ir.AttributeType.GRAPHS,)
               for attr in node.attributes.values()):
            raise ModelError(f"scorecam: node '{node.name}' ({node.op_type}) holds a subgraph, which scorecam "
                             "cannot copy into its loop")
        inputs = [copied.get(v, v) if v is not None else None for v in node.inputs]
        clone = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                        num_outputs=len(node.outputs), version=node.version, overload=node.overload)
        em.tape.graph_like.append(clone)  # type: ignore[union-attr]
        for old, new in zip(node.outputs, clone.outputs):
            new.type = old.type
            copied[old] = new
    return copied[logits]


def _descendants(value: ir.Value) -> set[ir.Value]:
    seen, stack = {value}, [value]
    while stack:
        for use in stack.pop().uses():
            for v in use.node.outputs:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
    return seen


# -- the feature map and its patch grid ---------------------------------------------------------
def feature_map(graph: ir.Graph, image: ir.Value, logits: ir.Value, layer: str | None,
                layout: str = image_layout.NCHW) -> tuple[ir.Value, str | None]:
    """The CAM layer, named or the last 4-D map with static H*W > 1 between image and logits, and
    the letters of its axes where they follow from the image's (export/feature_layout.py: a
    channels-last model's maps are found as such), else None (tokens; maps regrouped by a Reshape)."""
    letters = axis_letters(graph, image, layout)
    values = {v.name: v for node in graph for v in node.outputs}
    if layer is not None:
        if layer not in values:
            raise UsageError(f"--layer '{layer}' names no value of the model")
        chosen = values[layer]
        if chosen.shape is None or len(chosen.shape) not in (3, 4):
            raise UsageError(f"--layer '{layer}' is neither a feature map [N, C, H, W] / [N, H, W, C] nor tokens "
                             f"[N, T, C] (shape {chosen.shape})")
        return chosen, _followed(letters.get(chosen))
    candidates = []
    for node in graph:
        for v in node.outputs:
            found = letters.get(v)
            axes = None if found is None else spatial_and_channel_axes(layout if found == UNKNOWN else found)
            if axes is None:
                continue
            dims = list(v.shape)  # type: ignore[arg-type]
            height, width = dims[axes[1]], dims[axes[2]]
            if isinstance(height, int) and isinstance(width, int) and height * width > 1:
                candidates.append((v, _followed(found)))
    upstream = _ancestors(logits)
    candidates = [(v, found) for v, found in candidates if v in upstream]
    if not candidates:
        raise ModelError("no spatial feature map [N, C, H, W] with H*W > 1 leads to the logits: pass --layer")
    chosen, found = candidates[-1]
    tokens = _first_tokens(graph, image, upstream, layout)
    if tokens is not None and chosen in _descendants(tokens):
        # after the image became tokens, a 4-D value is attention's (heads, queries, keys), not a map
        raise UsageError(f"the model turns the image into tokens ('{tokens.name}', shape {tokens.shape}), so the "
                         "last 4-D value need not be a spatial map: pass --layer (e.g. the last block's first "
                         "LayerNorm output)")
    return chosen, found


def _first_tokens(graph: ir.Graph, image: ir.Value, upstream: set[ir.Value], layout: str) -> ir.Value | None:
    """The first value [N, T, C] on the way to the logits whose T is h*w or 1 + h*w of a patch grid."""
    height, width = _image_size(image, layout)
    for node in graph:
        for v in node.outputs:
            dims = list(v.shape or [])
            if v in upstream and len(dims) == 3 and isinstance(dims[1], int) and isinstance(dims[2], int) and any(
                    _patch_grid(dims[1] - p, height, width) for p in (0, 1)):
                return v
    return None


def _followed(letters: str | None) -> str | None:
    return None if letters in (None, UNKNOWN) else letters


def _grid_transform(em: Emitter, value: ir.Value, letters: str | None, height: int,
                    width: int) -> tuple[Callable[[ir.Value, int], ir.Value], tuple[int, int, int]]:
    """How to put ``value`` (and its cotangent, with ``lead`` more leading axes) on the grid
    [.., C, h, w], and (C, h, w): for a map whose axis ``letters`` are known, the transpose they
    say; else the identity for [N, C, h, w] and a transpose for Swin's [N, h, w, C] (told apart by
    h:w = H:W); for tokens [N, T, C], the class token dropped (T = 1 + h*w) and the rest laid out as
    h x w, row-major."""
    dims = list(value.shape or [])
    if not all(isinstance(d, int) for d in dims[1:]):
        raise ModelError(f"the CAM layer '{value.name}' must have static sizes after the batch axis "
                         f"(shape {value.shape})")
    sizes = [int(d) for d in dims[1:]]  # type: ignore[arg-type]
    if len(sizes) == 3 and letters is not None:
        axes = spatial_and_channel_axes(letters)
        assert axes is not None  # feature_map keeps only maps with the batch axis first
        sizes_chw = (sizes[axes[0] - 1], sizes[axes[1] - 1], sizes[axes[2] - 1])
        if axes == (1, 2, 3):
            return (lambda v, lead: v), sizes_chw
        return (lambda v, lead: em.Transpose(v, perm=[*range(lead + 1), *(lead + a for a in axes)])), sizes_chw
    if len(sizes) == 3:
        a, b, c = sizes
        if a * width == b * height and b * width != c * height and a * b > 1:  # Swin: [N, h, w, C]
            return (lambda v, lead: em.Transpose(v, perm=[*range(lead + 1), lead + 3, lead + 1, lead + 2])), (c, a, b)
        return (lambda v, lead: v), (a, b, c)
    tokens, channels = sizes
    fits = [(p, grid) for p in (0, 1) if (grid := _patch_grid(tokens - p, height, width)) is not None]
    if len(fits) != 1:
        raise UsageError(f"cannot put the tokens of '{value.name}' [N, {tokens}, {channels}] on a patch grid of the "
                         f"{height}x{width} image: {tokens} is not h*w or 1 + h*w with h:w = {height}:{width}"
                         if not fits else f"'{value.name}' [N, {tokens}, {channels}]: both {tokens} and "
                         f"{tokens - 1} tokens fit a patch grid of the {height}x{width} image: cannot tell "
                         "whether there is a class token")
    prefix, (h, w) = fits[0]

    def to_grid(v: ir.Value, lead: int) -> ir.Value:
        if prefix:
            v = em.slice(v, [prefix], [tokens], [lead + 1])
        grid = em.Reshape(v, em.ints([0] * (lead + 1) + [h, w, channels]))
        return em.Transpose(grid, perm=[*range(lead + 1), lead + 3, lead + 1, lead + 2])

    return to_grid, (channels, h, w)


def _patch_grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h * w = tokens > 1 and h:w = height:width, if there is one."""
    if tokens < 2:
        return None
    h = round(math.sqrt(tokens * height / width))
    if h < 1 or tokens % h or h * width != (tokens // h) * height:
        return None
    return h, tokens // h


def _image_size(image: ir.Value, layout: str) -> tuple[int, int]:
    dims = [d if isinstance(d, int) else None for d in (image.shape or [])]
    height, width = image_layout.channels_height_width(layout, dims)[1:] if len(dims) == 4 else (None, None)
    if height is None or width is None:
        raise ModelError(f"CAMs need a 4-D image input with static height and width (shape {image.shape})")
    return height, width


def _ancestors(value: ir.Value) -> set[ir.Value]:
    seen, stack = {value}, [value]
    while stack:
        node = stack.pop().producer()
        if node is None:
            continue
        for v in node.inputs:
            if v is not None and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen


# -- upsampling ----------------------------------------------------------------------------------
def _upsample(em: Emitter, x: ir.Value, size_in: tuple[int, int], size_out: tuple[int, int], mode: str) -> ir.Value:
    """Bilinear resize of the last two axes, as two MatMuls with ONNX Resize's own matrices."""
    up = [_bilinear_matrix(i, o, mode) for i, o in zip(size_in, size_out)]
    # separable_vjp applies A_h^T . x . A_w; the resize is U_h . x . U_w^T
    return separable_vjp(Context(em), x, [up[0].T.copy(), up[1].T.copy()])


def _bilinear_matrix(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """[size_out, size_in]: ONNX Resize, linear, with ``coordinate_transformation_mode`` ``mode``
    (half_pixel: cv2.resize and torch's align_corners=False; align_corners: UpsamplingBilinear2d)."""
    def make(axis: int, spatial_rank: int, in_size: int):
        sizes = onnx.numpy_helper.from_array(np.array([in_size, 1, size_out], np.int64), "sizes")
        node = onnx.helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                     coordinate_transformation_mode=mode)
        return node, [sizes]

    return probe_matrix(make, 0, 1, size_in, 13)
