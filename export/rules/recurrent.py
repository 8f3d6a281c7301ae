"""LSTM and GRU with their default activations: backpropagation through time, unrolled.

The ops output every hidden state (Y), so the gates of all steps are recomputed at once from X
and the hidden states before them (two MatMuls over the whole sequence per direction); only the
LSTM's cell states, which the op does not output, take a recurrence of two elementwise ops per
step. The backward then walks the steps in reverse: per step a few elementwise ops and one MatMul
[K, N, gates] x [gates, hidden] with the recurrent weights. The walk is unrolled over the
sequence length, which must therefore be static; a dynamic length, non-default activations,
clip, peepholes, LSTM's coupled input-forget gate, batch-first layout or sequence_lens shorter
than the sequence are refused, since the recomputation would not be the op's forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from varrt.export.emitter import Emitter
from varrt.export.rules.context import Context

_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
_GATES = {"LSTM": 4, "GRU": 3}


@dataclass
class _Direction:
    """One direction's weights and forward values, as the backward reads them."""

    index: int
    steps: list[int]  # time indices in the order the direction processes them
    w: ir.Value  # [gates*H, I]
    r: ir.Value  # [gates*H, H]
    gates: list[ir.Value]  # per gate, its pre-activation [T, N, H] (biases included)
    previous: ir.Value  # the hidden state each step starts from [T, N, H]
    recurrent_bias: ir.Value | None  # R's bias [gates*H]


def lstm(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    x, hidden, steps, count = _check(ctx, node)
    gx_parts, h0_parts, c0_parts = [], [], []
    for d in _directions(ctx, node, steps, count, hidden):
        i, o, f = (em.Sigmoid(a) for a in d.gates[:3])
        cand = em.Tanh(d.gates[3])
        cells = _cells(ctx, node, d, i, f, cand)  # c_t per time index, and the initial cell
        carry_h, carry_c = _zeros(ctx, node, g), _zeros(ctx, node, g)
        grads: dict[int, ir.Value] = {}
        for position, t in reversed(list(enumerate(d.steps))):
            dh, dc = _step_cotangents(ctx, node, d.index, t, position == len(d.steps) - 1, carry_h, carry_c)
            tanh_c = em.Tanh(cells[t])
            do = em.Mul(dh, tanh_c)
            dc = em.Add(dc, em.Mul(em.Mul(dh, _at(em, o, t)), _one_minus_square(em, tanh_c)))
            previous_c = cells[d.steps[position - 1]] if position else cells[-1]
            di, dcand = em.Mul(dc, _at(em, cand, t)), em.Mul(dc, _at(em, i, t))
            df = em.Mul(dc, previous_c)
            carry_c = em.Mul(dc, _at(em, f, t))
            da = em.Concat(_through_sigmoid(em, di, _at(em, i, t)), _through_sigmoid(em, do, _at(em, o, t)),
                           _through_sigmoid(em, df, _at(em, f, t)),
                           em.Mul(dcand, _one_minus_square(em, _at(em, cand, t))), axis=-1)
            carry_h = em.MatMul(da, d.r)
            grads[t] = da
        gx_parts.append(_input_cotangent(em, grads, d))
        h0_parts.append(carry_h)
        c0_parts.append(carry_c)
    return _results(em, node, gx_parts, {5: h0_parts, 6: c0_parts})


def gru(ctx: Context, node: ir.Node, g: ir.Value) -> list:
    em = ctx.em
    x, hidden, steps, count = _check(ctx, node)
    before_reset = node.attributes.get_int("linear_before_reset", 0)
    gx_parts, h0_parts = [], []
    for d in _directions(ctx, node, steps, count, hidden):
        z, r = em.Sigmoid(d.gates[0]), em.Sigmoid(d.gates[1])
        r_h = em.slice(d.r, [2 * hidden], [3 * hidden], [0])  # [H, H]
        r_zr = em.slice(d.r, [0], [2 * hidden], [0])  # [2H, H]
        # d.gates[2:] hold X W_h^T + W_bh and H R_h^T + R_bh apart: the candidate is
        # tanh(x_h + r * (H R_h^T + R_bh)) with linear_before_reset, tanh(x_h + (r * H) R_h^T + R_bh) without.
        x_h, recurrent_h = d.gates[2], d.gates[3]
        if before_reset:
            cand = em.Tanh(em.Add(x_h, em.Mul(r, recurrent_h)))
        else:
            reset = em.Add(x_h, em.MatMul(em.Mul(r, d.previous), em.Transpose(r_h, perm=[1, 0])))
            if d.recurrent_bias is not None:
                reset = em.Add(reset, em.slice(d.recurrent_bias, [2 * hidden], [3 * hidden], [0]))
            cand = em.Tanh(reset)
        carry = _zeros(ctx, node, g)
        grads: dict[int, ir.Value] = {}
        for position, t in reversed(list(enumerate(d.steps))):
            dh, _ = _step_cotangents(ctx, node, d.index, t, position == len(d.steps) - 1, carry, None)
            z_t, r_t, cand_t, previous_t = (_at(em, v, t) for v in (z, r, cand, d.previous))
            dz = em.Mul(dh, em.Sub(previous_t, cand_t))
            da_h = em.Mul(em.Mul(dh, em.Sub(em.scalar(1.0, like=z_t), z_t)), _one_minus_square(em, cand_t))
            dprevious = em.Mul(dh, z_t)
            if before_reset:
                dr = em.Mul(da_h, _at(em, recurrent_h, t))
                dprevious = em.Add(dprevious, em.MatMul(em.Mul(da_h, r_t), r_h))
            else:
                through = em.MatMul(da_h, r_h)
                dr = em.Mul(through, previous_t)
                dprevious = em.Add(dprevious, em.Mul(through, r_t))
            da_zr = em.Concat(_through_sigmoid(em, dz, z_t), _through_sigmoid(em, dr, r_t), axis=-1)
            carry = em.Add(dprevious, em.MatMul(da_zr, r_zr))
            grads[t] = em.Concat(da_zr, da_h, axis=-1)
        gx_parts.append(_input_cotangent(em, grads, d))
        h0_parts.append(carry)
    return _results(em, node, gx_parts, {5: h0_parts})


# -- what the op must look like ------------------------------------------------------------------
def _check(ctx: Context, node: ir.Node) -> tuple[ir.Value, int, int, int]:
    """The input X, the hidden size, the (static) sequence length and the number of directions."""
    op = node.op_type
    x = ctx.arg(node, 0)
    if node.attributes.get_int("layout", 0) != 0:
        raise ctx.fail(node, "layout=1 (batch first) is not supported; export with the sequence axis first")
    if node.attributes.get("clip") is not None:
        raise ctx.fail(node, "clip is not supported (the cell clipping changes the gradient)")
    if op == "LSTM" and node.attributes.get_int("input_forget", 0) != 0:
        raise ctx.fail(node, "input_forget=1 (coupled input and forget gates) is not supported")
    direction = node.attributes.get_string("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.fail(node, f"unknown direction '{direction}'")
    count = 2 if direction == "bidirectional" else 1
    activations = tuple(node.attributes.get_strings("activations", list(_DEFAULT_ACTIVATIONS[op] * count)))
    if [a.lower() for a in activations] != [a.lower() for a in _DEFAULT_ACTIVATIONS[op] * count]:
        raise ctx.fail(node, f"activations {list(activations)} are not the default "
                             f"{list(_DEFAULT_ACTIVATIONS[op])} per direction")
    if op == "LSTM" and len(node.inputs) > 7 and node.inputs[7] is not None:
        peepholes = node.inputs[7].const_value
        if peepholes is None or np.any(peepholes.numpy()):
            raise ctx.fail(node, "peepholes (input P) are not supported")
    if not node.outputs or not node.outputs[0].name:
        raise ctx.fail(node, "needs its output Y (every hidden state) to recompute the gates")
    steps = ctx.dims(x)[0]
    if steps is None:
        raise ctx.fail(node, f"needs a static sequence length (axis 0 of '{x.name}', shape {x.shape}): "
                             "its backward is unrolled over the steps")
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        lengths = ctx.const(node, 4)
        if lengths is None or np.any(lengths != steps):
            raise ctx.fail(node, f"sequence_lens other than the full length {steps} are not supported")
    r_dims = ctx.dims(ctx.arg(node, 2))
    hidden = node.attributes.get_int("hidden_size", r_dims[2] or 0)
    if hidden < 1:
        raise ctx.fail(node, "has no static hidden size (attribute hidden_size or R's last dim)")
    return x, hidden, steps, count


# -- the forward, recomputed ---------------------------------------------------------------------
def _directions(ctx: Context, node: ir.Node, steps: int, count: int, hidden: int) -> list[_Direction]:
    em = ctx.em
    x, w, r = ctx.arg(node, 0), ctx.arg(node, 1), ctx.arg(node, 2)
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    y = node.outputs[0]
    initial_h = node.inputs[5] if len(node.inputs) > 5 else None
    gates = _GATES[node.op_type]
    reverse = node.attributes.get_string("direction", "forward") == "reverse"
    result = []
    for d in range(count):
        order = list(range(steps))[::-1] if reverse or d == 1 else list(range(steps))
        w_d, r_d = _pick(em, w, d), _pick(em, r, d)
        hs = _pick(em, y, d, axis=1)  # [T, N, H]
        h0 = _pick(em, initial_h, d) if initial_h is not None else em.zeros_like(em.shape(_at(em, hs, 0)), y)
        before = _shifted(em, hs, h0, steps, backwards=order[0] != 0)
        xw = em.MatMul(x, em.Transpose(w_d, perm=[1, 0]))  # [T, N, gates*H]
        hr = em.MatMul(before, em.Transpose(r_d, perm=[1, 0]))
        recurrent_bias = None
        if bias is not None:
            b_d = _pick(em, bias, d)
            recurrent_bias = em.slice(b_d, [gates * hidden], [2 * gates * hidden], [0])
            xw = em.Add(xw, em.slice(b_d, [0], [gates * hidden], [0]))
            hr = em.Add(hr, recurrent_bias)
        x_parts = [em.slice(xw, [k * hidden], [(k + 1) * hidden], [2]) for k in range(gates)]
        h_parts = [em.slice(hr, [k * hidden], [(k + 1) * hidden], [2]) for k in range(gates)]
        if node.op_type == "LSTM":
            pre = [em.Add(a, b) for a, b in zip(x_parts, h_parts)]  # i, o, f, c
        else:  # z and r summed; h's two parts apart (how they combine depends on linear_before_reset)
            pre = [em.Add(x_parts[0], h_parts[0]), em.Add(x_parts[1], h_parts[1]), x_parts[2], h_parts[2]]
        result.append(_Direction(d, order, w_d, r_d, pre, before, recurrent_bias))
    return result


def _cells(ctx: Context, node: ir.Node, d: _Direction, i: ir.Value, f: ir.Value, cand: ir.Value) -> list[ir.Value]:
    """The LSTM's cell states c_t by time index, then the initial cell state last."""
    em = ctx.em
    initial_c = node.inputs[6] if len(node.inputs) > 6 else None
    first = _at(em, d.previous, 0)
    c = _pick(em, initial_c, d.index) if initial_c is not None else em.zeros_like(em.shape(first), first)
    cells: dict[int, ir.Value] = {}
    initial = c
    for t in d.steps:
        c = em.Add(em.Mul(_at(em, f, t), c), em.Mul(_at(em, i, t), _at(em, cand, t)))
        cells[t] = c
    return [cells[t] for t in range(len(d.steps))] + [initial]


def _shifted(em: Emitter, hs: ir.Value, h0: ir.Value, steps: int, backwards: bool) -> ir.Value:
    """The hidden state each step starts from, by time index: h0 then Y[:-1] (Y[1:] then h0 backwards)."""
    first = em.unsqueeze(h0, [0])
    if steps == 1:
        return first
    if backwards:
        return em.Concat(em.slice(hs, [1], [steps], [0]), first, axis=0)
    return em.Concat(first, em.slice(hs, [0], [steps - 1], [0]), axis=0)


# -- the backward's pieces -----------------------------------------------------------------------
def _step_cotangents(ctx: Context, node: ir.Node, d: int, t: int, last: bool, carry_h: ir.Value,
                     carry_c: ir.Value | None) -> tuple[ir.Value, ir.Value]:
    """dL/dh_t and dL/dc_t: what later steps carry back, plus Y[t] and, at the last step, Y_h and Y_c."""
    em = ctx.em
    outs = list(ctx.output_cotangents) + [None] * 3
    g_y, g_yh, g_yc = outs[:3]
    dh = carry_h
    if g_y is not None:
        dh = em.Add(dh, _at(em, _pick(em, g_y, d, axis=2), t, axis=1))
    if last and g_yh is not None:
        dh = em.Add(dh, _pick(em, g_yh, d, axis=1))
    dc = carry_c
    if last and g_yc is not None and dc is not None:
        dc = em.Add(dc, _pick(em, g_yc, d, axis=1))
    return dh, dc  # type: ignore[return-value]


def _input_cotangent(em: Emitter, grads: dict[int, ir.Value], d: _Direction) -> ir.Value:
    """dL/dX [K, T, N, I] from each step's pre-activation cotangents [K, N, gates*H]."""
    stacked = em.Concat(*(em.unsqueeze(grads[t], [1]) for t in sorted(grads)), axis=1)
    return em.MatMul(stacked, d.w)


def _results(em: Emitter, node: ir.Node, gx_parts: list[ir.Value], initial: dict[int, list[ir.Value]]) -> list:
    results: list = [em.add_all(gx_parts)] + [None] * (len(node.inputs) - 1)
    for index, parts in initial.items():
        if index < len(node.inputs) and node.inputs[index] is not None:
            results[index] = em.Concat(*(em.unsqueeze(p, [1]) for p in parts), axis=1)  # [K, D, N, H]
    return results


def _zeros(ctx: Context, node: ir.Node, g: ir.Value) -> ir.Value:
    """A zero cotangent [K, N, H] for the state after the last step."""
    em, y = ctx.em, node.outputs[0]
    first = _at(em, _pick(em, y, 0, axis=1), 0)
    return em.zeros_like(em.Concat(em.shape(g, 0, 1), em.shape(first), axis=0), y)


def _pick(em: Emitter, value: ir.Value, index: int, axis: int = 0) -> ir.Value:
    return em.Gather(value, em.const(np.array(index, dtype=np.int64)), axis=axis)


def _at(em: Emitter, value: ir.Value, t: int, axis: int = 0) -> ir.Value:
    return _pick(em, value, t, axis)


def _through_sigmoid(em: Emitter, g: ir.Value, s: ir.Value) -> ir.Value:
    return em.Mul(g, em.Mul(s, em.Sub(em.scalar(1.0, like=s), s)))


def _one_minus_square(em: Emitter, t: ir.Value) -> ir.Value:
    return em.Sub(em.scalar(1.0, like=t), em.Mul(t, t))


__all__: Sequence[str] = ("gru", "lstm")
