"""Perturbation maps, forward-only, inside the graph: occlusion and RISE.

Both run the model on many masked copies of the image and weigh each copy's class score by where
its mask is. The copies are made and run inside the graph, ``chunk`` masks at a time: one ONNX
``Loop`` whose body holds a copy of the model's forward, weights included (see _clone_forward for
why), and whose loop-carried state is the map being summed, [N, K, H*W]. Memory is
that of one forward of ``chunk * N`` images, whatever the number of masks. The trip count is a
constant and the accumulator keeps one shape through the iterations, no scan outputs: what the
ONNX-TensorRT parser documents for Loop (export/tensorrt_support.py). The masks are built in the
body from small constant tables computed at export with a seeded NumPy generator; the last chunk
is padded with masks that add nothing (all-zero RISE masks, empty occlusion windows).

occlusion (Zeiler & Fergus; exactly Captum's ``Occlusion`` with a window of (C, w, w) and strides
s): windows at offsets 0, s, 2s, ... along each of H and W, ceil((H - w) / s) + 1 of them (the
last one may run past the edge and is cut there, as Captum's mask is), every channel at once. For
window j with indicator O_j, the copy is x * (1 - O_j) + baseline * O_j and

    A_k(u) = sum_j (z_k(x) - z_k(copy_j)) O_j(u) / sum_j O_j(u)         (z: the logits)

the mean over the windows covering u of the logit drop; the same value on every channel, so the
map has the image's shape, [N, K, C, H, W], as Captum's. Tables: two indicator matrices
[windows, H] and [windows, W].

rise (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018): mask i is an s x s grid of cells kept with probability p (``keep``),
upsampled bilinearly to (s + 1) * c pixels per side (c = ceil(H / s)) and cropped to H x W at a
random offset in [0, c) per axis, as the paper's code does; the copy is x * m_i and

    A_k(u) = sum_i z_k(x * m_i) m_i(u) / (N_masks * p)

the paper's normalisation (its Eq. 6 estimates E[score | pixel u kept], and p is the share of
masks that keep a pixel: E[m_i(u)] = p exactly here, since the bilinear weights sum to 1). The
score is the logit, as for every other method of varrt (the graph's ``logits`` are what is
explained), not the paper's softmax probability: a score linear in the input keeps the expected
map in closed form (tests/export/test_perturbation.py), and all methods then hand VAR maps of the
same quantity. One consequence, measured and reported rather than hidden: the map carries the
score's mean over the masks as an offset common to all pixels, so for VAR (which compares |A|
across classes at each pixel) classes with large |logits| weigh more. The map is a pixel map,
[N, K, H, W]. The upsampling is bilinear with half-pixel centres and clamped edges (ONNX Resize
``linear``, torch ``interpolate(align_corners=False)``); the paper's code uses scikit-image's
``resize``, whose edges are mirrored, which changes only the outer half cell of the upsampled
grid. Tables: the grids [N_masks, s, s] (0/1), the offsets [N_masks] per axis and one
upsampling matrix [(s + 1) c, s] per axis; 2000 masks of 7 x 7 take 0.4 MB, not the 400 MB the
masks themselves would at 224 x 224.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from varrt.core.errors import ModelError, UsageError
from varrt.export.emitter import Emitter

#: The perturbation methods and what their maps are.
PERTURBATIONS = ("occlusion", "rise")


@dataclass(frozen=True)
class PerturbationOptions:
    """The options of ``occlusion`` and ``rise`` (``explain_graph``'s keyword arguments)."""

    method: str  # "occlusion" or "rise"
    window: int = 16  # occlusion: side of the square window, in pixels
    stride: int = 8  # occlusion: step between windows
    baseline: float = 0.0  # occlusion: the value an occluded pixel takes
    samples: int = 2000  # rise: number of masks
    mask_size: int = 7  # rise: cells per side of the low-resolution grid
    keep: float = 0.5  # rise: probability that a cell is kept
    chunk: int = 32  # masked copies per forward inside the graph (memory: one forward of chunk * N)
    seed: int = 0  # rise: the NumPy generator's seed

    def check(self, height: int, width: int) -> None:
        """Refuse options that cannot give the map (one line, naming the option)."""
        _positive("chunk", self.chunk)
        if self.method == "occlusion":
            _positive("window", self.window)
            _positive("stride", self.stride)
            if self.window > min(height, width):
                raise UsageError(f"--window {self.window} is larger than the image ({height}x{width})")
            if self.stride > self.window:
                raise UsageError(f"--stride {self.stride} is larger than --window {self.window}: pixels between "
                                 "windows would have no attribution (Captum refuses it too)")
            if not math.isfinite(self.baseline):
                raise UsageError(f"--baseline must be finite (got {self.baseline})")
        else:
            _positive("samples", self.samples)
            _positive("mask-size", self.mask_size)
            if self.mask_size > min(height, width):
                raise UsageError(f"--mask-size {self.mask_size} is larger than the image ({height}x{width})")
            if not 0.0 < self.keep <= 1.0:
                raise UsageError(f"--keep must lie in (0, 1] (got {self.keep})")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--{name} must be a positive integer (got {value!r})")


# --- the masks, as NumPy tables at export ---------------------------------------------------------


def occlusion_windows(size: int, window: int, stride: int) -> np.ndarray:
    """[count, size] float32: row j is 1 on [j * stride, j * stride + window), cut at ``size``;
    count = ceil((size - window) / stride) + 1, Captum's shift count."""
    count = math.ceil((size - window) / stride) + 1
    starts = np.arange(count)[:, None] * stride
    pixels = np.arange(size)[None, :]
    return ((pixels >= starts) & (pixels < starts + window)).astype(np.float32)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] float64: bilinear resizing with half-pixel centres and clamped edges
    (torch ``interpolate(mode="bilinear", align_corners=False)`` along one axis)."""
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


@dataclass(frozen=True)
class RiseTables:
    """RISE's masks in factored form: mask i = up_h[dy_i : dy_i + H] @ grid_i @ up_w[dx_i : dx_i + W]^T."""

    grids: np.ndarray  # [samples, s, s] float32, 0 or 1
    shift_y: np.ndarray  # [samples] int64, in [0, c_h)
    shift_x: np.ndarray  # [samples] int64, in [0, c_w)
    up_h: np.ndarray  # [(s + 1) * c_h, s] float32
    up_w: np.ndarray  # [(s + 1) * c_w, s] float32

    @classmethod
    def make(cls, height: int, width: int, samples: int, mask_size: int, keep: float, seed: int) -> RiseTables:
        rng = np.random.default_rng(seed)
        cell_h, cell_w = math.ceil(height / mask_size), math.ceil(width / mask_size)
        grids = (rng.random((samples, mask_size, mask_size)) < keep).astype(np.float32)
        shift_y = rng.integers(0, cell_h, samples, dtype=np.int64)
        shift_x = rng.integers(0, cell_w, samples, dtype=np.int64)
        up_h = bilinear_matrix(mask_size, (mask_size + 1) * cell_h).astype(np.float32)
        up_w = bilinear_matrix(mask_size, (mask_size + 1) * cell_w).astype(np.float32)
        return cls(grids, shift_y, shift_x, up_h, up_w)

    def masks(self, height: int, width: int) -> np.ndarray:
        """[samples, H, W] float32: the masks themselves (for references and tests)."""
        rows = self.up_h[self.shift_y[:, None] + np.arange(height)]  # [samples, H, s]
        cols = self.up_w[self.shift_x[:, None] + np.arange(width)]  # [samples, W, s]
        return (rows @ self.grids @ cols.transpose(0, 2, 1)).astype(np.float32)


# --- the graph ------------------------------------------------------------------------------------


def perturbation_map(em: Emitter, graph: ir.Graph, image: ir.Value, logits: ir.Value, class_ids: ir.Value,
                     num_classes: int, options: PerturbationOptions) -> ir.Value:
    """The map [N, K, C, H, W] (occlusion) or [N, K, H, W] (rise) of the classes ``class_ids``
    [N, K], from the forward ``image`` -> ``logits`` [N, num_classes] already in ``graph``."""
    method = options.method
    dims = list(image.shape or [])
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        raise ModelError(f"{method} needs an image input [N, C, H, W] with static C, H and W "
                         f"(input '{image.name}' has shape {image.shape})")
    if isinstance(dims[0], int):  # the model's shape arithmetic may have folded that size in
        raise UsageError(f"{method} runs its masked copies along the batch axis, but the model's batch axis is "
                         f"fixed to {dims[0]}: export the model with a dynamic batch axis")
    channels, height, width = (int(d) for d in dims[1:])  # type: ignore[arg-type]
    options.check(height, width)
    loop = _MaskLoop(em, graph, image, logits, class_ids, num_classes, height * width, options.chunk)
    if method == "occlusion":
        return _occlusion(loop, options, channels, height, width)
    return _rise(loop, options, height, width)


def _occlusion(loop: _MaskLoop, options: PerturbationOptions, channels: int, height: int, width: int) -> ir.Value:
    em = loop.em
    rows = occlusion_windows(height, options.window, options.stride)
    cols = occlusion_windows(width, options.window, options.stride)
    count = len(rows) * len(cols)
    padded = loop.padded(count)
    # window j = (a, b), a = j // len(cols): its row and column indicators, zero for the padding
    row_table = np.zeros((padded, height), np.float32)
    col_table = np.zeros((padded, width), np.float32)
    row_table[:count] = np.repeat(rows, len(cols), axis=0)
    col_table[:count] = np.tile(cols, (len(rows), 1))
    covered = (rows.sum(0)[:, None] * cols.sum(0)[None, :]).reshape(-1).astype(np.float32)
    chosen = loop.scores_of(loop.logits)  # [N, K]
    baseline = em.scalar(options.baseline, like=loop.image)

    def body(bem: Emitter, index: ir.Value, image: ir.Value) -> tuple[ir.Value, ir.Value]:
        occluded = bem.Mul(bem.unsqueeze(bem.Gather(bem.const(row_table), index, axis=0), [2]),
                           bem.unsqueeze(bem.Gather(bem.const(col_table), index, axis=0), [1]))  # [B, H, W]
        window = bem.unsqueeze(occluded, [1, 2])  # [B, 1, 1, H, W]
        # Captum's arithmetic: input * (1 - mask) + baseline * mask
        copies = bem.Add(bem.Mul(image, bem.Sub(bem.scalar(1.0, like=occluded), window)), bem.Mul(baseline, window))
        return bem.Sub(bem.unsqueeze(chosen, [0]), loop.copy_scores(bem, copies)), occluded  # drops [B, N, K]

    total = loop.run(body, padded)  # [N, K, H*W]
    mean = em.Div(total, em.const(covered))
    return em.Expand(em.Reshape(mean, em.ints([0, 0, 1, height, width])), em.ints([1, 1, channels, height, width]))


def _rise(loop: _MaskLoop, options: PerturbationOptions, height: int, width: int) -> ir.Value:
    em = loop.em
    tables = RiseTables.make(height, width, options.samples, options.mask_size, options.keep, options.seed)
    padded = loop.padded(options.samples)
    extra = padded - options.samples  # padding masks are all zero: they add nothing to the sum
    grids = np.concatenate([tables.grids, np.zeros((extra, *tables.grids.shape[1:]), np.float32)])
    shift_y = np.concatenate([tables.shift_y, np.zeros(extra, np.int64)])
    shift_x = np.concatenate([tables.shift_x, np.zeros(extra, np.int64)])

    def body(bem: Emitter, index: ir.Value, image: ir.Value) -> tuple[ir.Value, ir.Value]:
        def upsampling(shifts: np.ndarray, table: np.ndarray, size: int) -> ir.Value:  # [B, size, s]
            offsets = bem.unsqueeze(bem.Gather(bem.const(shifts), index, axis=0), [1])
            return bem.Gather(bem.const(table), bem.Add(offsets, bem.const(np.arange(size, dtype=np.int64))), axis=0)

        grid = bem.Gather(bem.const(grids), index, axis=0)  # [B, s, s]
        cols = bem.Transpose(upsampling(shift_x, tables.up_w, width), perm=[0, 2, 1])
        masks = bem.MatMul(bem.MatMul(upsampling(shift_y, tables.up_h, height), grid), cols)  # [B, H, W]
        copies = bem.Mul(image, bem.unsqueeze(masks, [1, 2]))
        return loop.copy_scores(bem, copies), masks

    total = loop.run(body, padded)  # [N, K, H*W]
    scaled = em.Mul(total, em.scalar(1.0 / (options.samples * options.keep), like=loop.image))
    return em.Reshape(scaled, em.ints([0, 0, height, width]))


#: A Loop body's work for one chunk: (emitter, mask indices [B], image [1, N, C, H, W]) ->
#: (weights [B, N, K], masks [B, H, W]); the weights come from the model's scores of the copies.
Body = Callable[[Emitter, ir.Value, ir.Value], tuple[ir.Value, ir.Value]]


class _MaskLoop:
    """A Loop over chunks of masks whose body runs a copy of the model's forward on the masked
    copies and adds weights[B, N, K] x masks[B, H*W] to the carried sum [N, K, H*W]."""

    def __init__(self, em: Emitter, graph: ir.Graph, image: ir.Value, logits: ir.Value, class_ids: ir.Value,
                 num_classes: int, pixels: int, chunk: int):
        self.em, self.graph, self.image, self.logits, self.class_ids = em, graph, image, logits, class_ids
        self.num_classes, self.pixels, self.chunk = num_classes, pixels, chunk
        self.forward = _forward_nodes(graph, image, logits)

    def padded(self, masks: int) -> int:
        """The number of masks rounded up to whole chunks (the chunk shrinks to fit a small count)."""
        self.chunk = min(self.chunk, masks)
        return -(-masks // self.chunk) * self.chunk

    def scores_of(self, logits: ir.Value) -> ir.Value:
        """[..., N, classes] -> [..., N, K]: the logits of the explained classes."""
        em = self.em
        if em.opset >= 11:
            return em.GatherElements(logits, self._ids_like(em, logits), axis=1)
        return self._scores_by_one_hot(em, logits, 2)

    def copy_scores(self, bem: Emitter, copies: ir.Value) -> ir.Value:
        """[B, N, C, H, W] masked copies -> [B, N, K]: their logits of the explained classes."""
        flat = bem.Reshape(copies, bem.Concat(bem.ints([-1]), bem.shape(self.image, 1), axis=0))
        logits = self._clone_forward(bem, flat)  # [B*N, classes]
        per_copy = bem.Reshape(logits, bem.Concat(bem.ints([self.chunk]), bem.shape(self.logits), axis=0))
        if bem.opset >= 11:
            return bem.GatherElements(per_copy, self._ids_like(bem, per_copy), axis=2)
        return self._scores_by_one_hot(bem, per_copy, 3)

    def _ids_like(self, em: Emitter, logits: ir.Value) -> ir.Value:
        # class_ids [N, K] broadcast to the leading axes of ``logits``
        if logits is self.logits:
            return self.class_ids
        shape = em.Concat(em.ints([self.chunk]), em.shape(self.class_ids), axis=0)
        return em.Expand(em.unsqueeze(self.class_ids, [0]), shape)

    def _scores_by_one_hot(self, em: Emitter, logits: ir.Value, rank: int) -> ir.Value:
        # opset < 11 has no GatherElements: sum_c logits[..., c] * (ids == c), exact (one term)
        classes = em.const(np.arange(self.num_classes, dtype=np.int64))
        one_hot = em.cast_like(em.Equal(em.unsqueeze(self.class_ids, [2]), classes), logits)  # [N, K, classes]
        return em.reduce_sum(em.Mul(em.unsqueeze(logits, [rank - 1]), one_hot), [rank], keepdims=False)

    def _clone_forward(self, bem: Emitter, images: ir.Value) -> ir.Value:
        """The model's forward from ``images`` (a value of the body) to its logits, in the body.

        The model's weights become the body's own initializers (written twice in the file): ONNX
        Runtime optimises a subgraph's convolutions (blocked layout, fused activations) only with
        weights of that subgraph, and read from the outer graph the Loop ran 2.7x slower on
        EfficientNet-Lite0 (49 copies: 9.0-14.1 s against 3.4-4.9 s, alternating rounds; the graph
        file grows from 18.9 to 37.5 MB). Other values it does not compute (image-independent
        nodes) are read from the outer graph."""
        copies: dict[ir.Value, ir.Value] = {self.image: images}
        for node in self.forward:
            for value in node.inputs:
                if value is not None and value not in copies and _is_weight(value):
                    name = f"{value.name}_chunk"  # a tensor of its own: sharing one would rename the model's
                    tensor = ir.tensor(value.const_value.numpy(), name=name)  # type: ignore[union-attr]
                    copies[value] = own = ir.Value(name=name, type=value.type, shape=value.shape, const_value=tensor)
                    bem.graph.register_initializer(own)
            inputs = [copies.get(v, v) if v is not None else None for v in node.inputs]
            copy = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                           num_outputs=len(node.outputs), version=node.version,
                           name=f"{node.name}_masked" if node.name else None)
            for value, new in zip(node.outputs, copy.outputs, strict=True):
                new.type = value.type  # the shape is left out: the body's batch is chunk * N, not N
                copies[value] = new
            bem.graph.append(copy)
        return copies[self.logits]

    def run(self, body: Body, padded: int) -> ir.Value:
        """Run ``body(bem, index [B], image) -> (weights [B, N, K], masks [B, H, W])`` over the
        chunks; the sum over all masks of weights x masks, [N, K, H*W]."""
        em = self.em
        index_in = ir.Value(name="perturbation_chunk", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
        cond_in = ir.Value(name="perturbation_cond", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
        total_in = ir.Value(name="perturbation_sum", type=self.image.type, shape=None)
        inner = ir.Graph([index_in, cond_in, total_in], [], nodes=[], name="perturbation_chunk_body",
                         opset_imports={"": em.opset})
        bem = Emitter(inner, em.opset, prefix="varrt_chunk")
        bem.const = em.const  # type: ignore[method-assign]  # tables live in the outer graph
        first = bem.Mul(index_in, bem.const(np.array(self.chunk, np.int64)))
        index = bem.Add(first, bem.const(np.arange(self.chunk, dtype=np.int64)))  # [B]
        weights, masks = body(bem, index, bem.unsqueeze(self.image, [0]))
        added = bem.MatMul(bem.Transpose(weights, perm=[1, 2, 0]), bem.Reshape(masks, bem.ints([self.chunk, -1])))
        total_out = bem.Add(total_in, added)
        inner.outputs.extend([bem.Identity(cond_in), total_out])
        for node in inner:  # names unique across both scopes (each graph names its own values val_<i>)
            for value in node.outputs:
                value.name = f"varrt_chunk_{value.name}"
        start = em.Expand(em.scalar(0.0, like=self.image),
                          em.Concat(em.shape(self.class_ids), em.ints([self.pixels]), axis=0))
        trips = em.const(np.array(padded // self.chunk, np.int64))
        keep_going = em.const(np.array(True))
        return em.op("Loop", trips, keep_going, start, body=inner)


def _is_weight(value: ir.Value) -> bool:
    # an initializer that is also a graph input may be fed at run time: read it from outside
    return value.is_initializer() and value.const_value is not None and not value.is_graph_input()


def _forward_nodes(graph: ir.Graph, image: ir.Value, logits: ir.Value) -> list[ir.Node]:
    """The nodes between ``image`` and ``logits``, in graph order (the rest is read from outside)."""
    needed: set[ir.Node] = set()
    stack = [logits]
    seen = {logits}
    while stack:
        node = stack.pop().producer()
        if node is None or node in needed:
            continue
        needed.add(node)
        for value in node.inputs:
            if value is not None and value not in seen:
                seen.add(value)
                stack.append(value)
    depends = {image}
    chosen = []
    for node in graph:
        if node in needed and any(v in depends for v in node.inputs if v is not None):
            depends.update(node.outputs)
            chosen.append(node)
    if logits not in depends:
        raise ModelError(f"the logits '{logits.name}' do not depend on the image '{image.name}'")
    for node in chosen:
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise ModelError(f"occlusion and rise copy the model's forward into a Loop, and node '{node.name}' "
                             f"({node.op_type}) holds a subgraph: not supported")
    return chosen
