"""explain_graph: a classifier in, its explanation graph out (the contract in DESIGN.md)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes
from varrt.core import layout as image_layout
from varrt.core.classes import ClassesArg, ClassSpec, check_spec_fits, parse_classes
from varrt.core.contract import ATTRIBUTIONS, CLASS_IDS, LOGITS, RESERVED_INPUTS, RESERVED_OUTPUTS, VAR_ATTRIBUTIONS
from varrt.core.defaults import TAU, TEMPERATURE, VAR_SCALE
from varrt.core.errors import ModelError, UsageError
from varrt.core.version import __version__
from varrt.export.autodiff import backward
from varrt.export.cams import class_activation_map
from varrt.export.emitter import Emitter
from varrt.export.methods import METHOD_TABLE, METHODS, Method, default_samples
from varrt.export.model_loading import Classifier, InputShape, format_input_shape, load_classifier, read_model
from varrt.export.passes import TARGETS, optimize
from varrt.export.perturbation import PerturbationOptions, perturbation_map
from varrt.export.rules import lrp
from varrt.export.steps import STEP_INPUTS, Steps, batch_steps
from varrt.kernels.var_graph import append_var


def explain_graph(
    model: str | os.PathLike | onnx.ModelProto,
    method: str = "gradient",
    *,
    layer: str | None = None,
    steps: int = 32,
    baseline: float = 0.0,
    samples: int | None = None,
    noise: float = 0.15,
    window: int = 16,
    stride: int = 8,
    mask_size: int = 7,
    keep: float = 0.5,
    chunk: int = 32,
    lrp_rule: str = "epsilon",
    epsilon: float = lrp.STABILITY,
    gamma: float = 0.25,
    step_batch: int | None = None,
    var: bool = False,
    temperature: float = TEMPERATURE,
    tau: float = TAU,
    var_scale: str = VAR_SCALE,
    classes: ClassesArg | None = None,
    seed: int = 0,
    batch: int | None = None,
    input_shape: InputShape | None = None,
    mask_batch: int | None = None,
    name: str | None = None,
    target: str = "portable",
    layout: str | None = None,
) -> onnx.ModelProto:
    """Rewrite an ONNX classifier into a graph that also returns per-class attributions.

    The result has the model's own image input plus ``class_ids`` int64 [N, K] (or, with
    ``classes="top4+min"`` / ``"topK"``, no such input and a ``class_ids`` output chosen in the
    graph from its own logits), and the outputs ``logits`` [N, num_classes] (pre-softmax),
    ``attributions`` [N, K, *image.shape[1:]] ([N, K, H, W] for the CAMs and ``rise``, whatever the image's
    layout) and, with
    ``var=True``, ``var_attributions`` (``var_scale`` as in ``varrt.kernels.var_maps``). Only
    standard ONNX ops are emitted.

    ``samples``: SmoothGrad's noisy copies (default 16) or RISE's masks (default 2000). occlusion
    (``window``, ``stride``, ``baseline``) and rise (``samples``, ``mask_size``, ``keep``, ``seed``)
    run their masked copies ``chunk`` at a time in a Loop (export/perturbation.py).

    ``classes`` (``"top4+min"``, ``"topK"``, K, or class ids; ``varrt.core.classes``) builds the
    choice into the graph. ``name`` is what error messages call the model (default: its path, or
    the graph's name).

    ``batch`` fixes the image batch axis to that size (the model's is usually dynamic).
    ``input_shape`` fixes the image input's dimensions, e.g. ``(1, 3, 224, 224)``; a dimension given
    by name (``("N", 3, 224, 224)``) stays as the model has it. Models with dynamic height and width
    need it.
    ``baseline`` is the pixel value of the baseline image for ``integrated_gradients`` and
    ``deeplift``. ``lrp_rule`` (``"epsilon"``, ``"gamma"``, ``"zplus"``) is the rule ``lrp`` runs on
    layers with weights; ``epsilon`` is the epsilon rule's stabiliser wherever that rule applies and
    ``gamma`` the gamma rule's factor (Captum's defaults; export/rules/lrp.py).
    ``steps`` (integrated_gradients) and ``samples`` (smoothgrad, gradient_shap) are run as one
    batch; with ``step_batch`` the graph instead takes the points of one run as an extra input
    (``alphas`` or ``sample_weights``, export/steps.py), so a caller can bound memory by running
    ``step_batch`` of them at a time and adding the runs' attributions (the Explainer does).
    ``layer`` names the CAMs' feature map (export/cams.py); ``mask_batch`` bounds scorecam's masked
    copies per image and forward (default 32; 1 where the batch axis is fixed).
    ``target`` picks the graph passes run after the backward (export/passes/): "portable" (none:
    for TensorRT, CUDA or any runtime) or "onnxruntime-cpu" (stride phases, sunk reshapes and,
    with a batch of 1, guided-backprop masks in a bias form: the graph to deploy on ONNX
    Runtime's CPU provider, one image per run).
    ``layout`` ("nchw" or "nhwc") says where the image keeps its channels when the rule of
    ``varrt.core.layout`` (channels-last when the last dimension is 1 or 3 and the second is not)
    guesses wrong; Grad-CAM reads the image's height and width by it. It is recorded as the
    graph's ``varrt.layout`` metadata.

    >>> import onnxruntime as ort
    >>> graph = explain_graph("model.onnx", method="guided_backprop")        # doctest: +SKIP
    >>> session = ort.InferenceSession(graph.SerializeToString())            # doctest: +SKIP
    >>> logits, maps = session.run(None, {"input": images, "class_ids": ids})  # doctest: +SKIP
    """
    spec = _checked_method(method, target, batch)
    _check_mask_batch(method, mask_batch)
    samples = samples if samples is not None else default_samples(method)
    _check_step_batch(method, spec, step_batch)
    _check_options(steps=steps, samples=samples, noise=noise, temperature=temperature)
    settings = _lrp_settings(lrp_rule, epsilon, gamma) if spec.modified == "lrp" else {}
    name = name or (str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model"))
    chosen = None if classes is None else parse_classes(classes, var=var)
    proto = read_model(model)
    if {o.name for o in proto.graph.output} >= {LOGITS, ATTRIBUTIONS}:
        raise UsageError(f"{name}: is already an explanation graph (it has '{ATTRIBUTIONS}')")
    clf = load_classifier(proto, name, batch=batch, input_shape=input_shape)
    layout = image_layout.resolve(_dims(clf.data_input), layout)
    if spec.perturbation and layout != image_layout.NCHW:  # export/perturbation.py builds [C, H, W] masks
        raise UsageError(f"{name}: {method} is built for channels-first images [N, C, H, W], and this model's "
                         f"input is {image_layout.describe(layout)}")
    builder = _Builder(clf, spec, seed, settings, layout)
    masks = PerturbationOptions(method=method, window=window, stride=stride, baseline=baseline, samples=samples,
                                mask_size=mask_size, keep=keep, chunk=chunk, seed=seed)
    try:
        outputs = builder.build(layer=layer, steps=steps, baseline=baseline, samples=samples, noise=noise,
                                mask_batch=mask_batch, step_batch=step_batch, classes=chosen, masks=masks)
    except ModelError as error:  # rules name the node and op; the user also needs the file
        raise type(error)(f"{name}: {error}{_size_hint(clf.data_input, layout)}") from error
    if var:
        rank = len(_output_shape(ATTRIBUTIONS, clf, {"method": method, "layout": layout}))
        outputs[VAR_ATTRIBUTIONS] = append_var(builder.em.tape, outputs[ATTRIBUTIONS], temperature=temperature,
                                                 tau=tau, opset=clf.opset, scale=var_scale, rank=rank)
    options = dict(method=method, layer=layer, steps=steps, baseline=baseline, samples=samples, noise=noise,
                   step_batch=step_batch, var=var, temperature=temperature, tau=tau, var_scale=var_scale,
                   classes=chosen and chosen.text, batch=batch, target=target, layout=layout)
    if spec.perturbation:  # their own options, recorded only where they apply
        options.update(window=window, stride=stride, mask_size=mask_size, keep=keep, chunk=chunk, seed=seed)
    options.update(settings)
    if input_shape is not None:
        options["input_shape"] = format_input_shape(input_shape)
    if mask_batch is not None:
        options["mask_batch"] = mask_batch
    return _finish(clf, outputs, options, "K" if chosen is None else chosen.k)


def _dims(value: ir.Value) -> list[int | None]:
    """A value's dims, None where dynamic."""
    return [d if isinstance(d, int) else None for d in (value.shape or [])]


def _size_hint(image: ir.Value, layout: str) -> str:
    """For a refusal on a model whose image height or width is dynamic: how to fix them."""
    dims = list(image.shape or [])
    if len(dims) < 4 or all(isinstance(d, int) for d in dims[1:]):
        return ""
    shown = [d if isinstance(d, int) else (str(d) if d.value is not None else "?") for d in dims]
    letters = layout.upper()
    wanted = "x".join(str(d) if isinstance(d, int) else letters[i] if i < 4 else f"D{i}" for i, d in enumerate(dims))
    return (f" (input '{image.name}' has shape [{', '.join(map(str, shown))}]: its height and width must be fixed "
            f"for this model; pass --input-shape {wanted} (explain_graph(input_shape=...)))")


def _checked_method(method: str, target: str, batch: int | None) -> Method:
    """The method's description, once method, target and batch are known to fit together."""
    if method not in METHOD_TABLE:
        raise UsageError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    spec = METHOD_TABLE[method]
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise UsageError(f"--batch must be a positive integer (got {batch!r})")
    if batch is not None and spec.batching:
        raise UsageError(f"{method} runs its {_BATCHED[spec.batching][1]} along the batch axis, "
                         "so it cannot be fixed: leave --batch out")
    return spec


def _check_mask_batch(method: str, mask_batch: int | None) -> None:
    if mask_batch is None:
        return
    if method != "scorecam":
        raise UsageError(f"--mask-batch applies to scorecam only (method {method})")
    if isinstance(mask_batch, bool) or not isinstance(mask_batch, int) or mask_batch < 1:
        raise UsageError(f"--mask-batch must be a positive integer (got {mask_batch!r})")


def _lrp_settings(rule: str, epsilon: float, gamma: float) -> dict:
    if rule not in lrp.RULES:
        raise UsageError(f"unknown --lrp-rule '{rule}' (choose from {', '.join(lrp.RULES)})")
    if not epsilon > 0 or not gamma >= 0:
        raise UsageError(f"--epsilon must be > 0 and --gamma >= 0 (got {epsilon}, {gamma})")
    return {"lrp_rule": rule, "epsilon": float(epsilon), "gamma": float(gamma)}


def _check_step_batch(method: str, spec: Method, step_batch: int | None) -> None:
    if step_batch is None:
        return
    if spec.batching not in STEP_INPUTS:
        raise UsageError(f"--step-batch is for methods that batch steps or samples, not {method}")
    if isinstance(step_batch, bool) or not isinstance(step_batch, int) or step_batch < 1:
        raise UsageError(f"--step-batch must be a positive integer (got {step_batch!r})")


def _check_options(**values: float) -> None:
    for key in ("steps", "samples"):
        if int(values[key]) < 1:
            raise UsageError(f"--{key} must be at least 1 (got {values[key]})")
    if values["noise"] < 0 or values["temperature"] <= 0:
        raise UsageError("--noise must be >= 0 and --temperature > 0")


class _Builder:
    """Emits one explanation into the classifier's graph."""

    def __init__(self, clf: Classifier, spec: Method, seed: int, settings: dict, layout: str):
        self.clf, self.spec, self.seed, self.layout = clf, spec, seed, layout
        self.settings = {"rule" if k == "lrp_rule" else k: v for k, v in settings.items()}
        self.graph = clf.model.graph
        _rename_reserved(self.graph)
        self.em = Emitter(self.graph, clf.opset)
        self.image = clf.data_input
        self.wrt = clf.data_input  # what the backward differentiates: the batched image, if batched

    def build(self, *, layer, steps, baseline, samples, noise, mask_batch, step_batch,
              classes: ClassSpec | None, masks: PerturbationOptions) -> dict[str, ir.Value]:
        em, spec = self.em, self.spec
        if spec.perturbation:  # forward-only: the model on masked copies, no backward
            logits = self._logits_2d()
            class_ids = self._class_ids(logits, classes)
            attributions = perturbation_map(em, self.graph, self.image, logits, class_ids,
                                            self._num_classes(logits), masks)
            return {LOGITS: logits, CLASS_IDS: class_ids, ATTRIBUTIONS: attributions}
        image = self.image
        steps_batch = None
        if spec.batching:
            steps_batch = self._batch_image(spec.batching, steps, baseline, samples, noise, step_batch)
        logits_all = self.logits_all = self._logits_2d()
        logits = logits_all
        if steps_batch is not None:  # block 0 is the image itself
            logits = em.Gather(em.Reshape(logits_all, em.Concat(em.ints([-1]), em.shape(self.image, 0, 1),
                                                                em.ints([self._num_classes(logits_all)]), axis=0)),
                               em.const(np.array(0, np.int64)), axis=0)
        class_ids = self._class_ids(logits, classes)
        seed = self._one_hot(class_ids, logits)  # [K, N, C]
        if spec.relevance:
            seed = em.Mul(seed, logits)
        outputs = {LOGITS: logits, CLASS_IDS: class_ids}

        if spec.cam:
            cam = class_activation_map(em, self.graph, spec.cam, image=image, logits=logits_all, seed=seed,
                                       num_classes=self._num_classes(logits), layer=layer,
                                       mask_batch=mask_batch, layout=self.layout)  # [K, N, H, W]
            if spec.modified:
                guided = backward(em, {logits_all: seed}, [image], modified_backward=spec.modified)[0]
                rank = len(self.image.shape)  # type: ignore[arg-type]
                cam = em.Mul(guided, em.unsqueeze(cam, [1 + image_layout.channel_axis(self.layout, rank)]))
            attributions = cam
        else:
            seed_all = seed if steps_batch is None else self._seed_blocks(seed, steps_batch.weights)
            grad = backward(em, {logits_all: seed_all}, [self.wrt], modified_backward=spec.modified,
                            settings=self.settings)[0]
            if steps_batch is not None:
                if spec.batching == "baseline":  # the image's half; the baseline's is not attributed
                    grad = em.Gather(em.Reshape(grad, em.Concat(em.ints([0, 2, -1]), em.shape(grad, 2), axis=0)),
                                     em.const(np.array(0, np.int64)), axis=1)
                else:
                    if steps_batch.per_block is not None:
                        grad = em.Mul(grad, steps_batch.per_block)
                    grad = em.reduce_sum(em.Reshape(grad, em.Concat(em.ints([0, -1]), em.shape(self.image, 0, 1),
                                                                    em.shape(grad, 2), axis=0)), [1], keepdims=False)
                if steps_batch.after_sum is not None:
                    grad = em.Mul(grad, steps_batch.after_sum)
            elif spec.times_input:
                grad = em.Mul(grad, self.image)
            attributions = grad
        rank = 4 if spec.pixel_map else len(self.image.shape) + 1  # type: ignore[arg-type]
        outputs[ATTRIBUTIONS] = em.Transpose(attributions, perm=[1, 0] + list(range(2, rank)))
        return outputs

    # -- pieces -------------------------------------------------------------------------------
    def _logits_2d(self) -> ir.Value:
        source = self.clf.logits_source
        if source.shape is not None and len(source.shape) == 2:
            return source
        return self.em.Flatten(source, axis=1)

    def _num_classes(self, logits: ir.Value) -> int:
        source = self.clf.logits_source
        dims = [d for d in (source.shape or [])][1:]
        if not dims or not all(isinstance(d, int) for d in dims):
            raise ModelError(f"the number of classes of '{source.name}' must be static (shape {source.shape})")
        return int(np.prod(dims))  # type: ignore[arg-type]

    def _class_ids(self, logits: ir.Value, classes: ClassSpec | None) -> ir.Value:
        em = self.em
        if classes is None:
            batch = self.image.shape[0] if self.image.shape is not None else "N"
            ids = ir.Value(name=CLASS_IDS, type=ir.TensorType(ir.DataType.INT64),
                           shape=ir.Shape([batch if batch is not None else "N", "K"]))
            self.graph.inputs.append(ids)
            return ids
        check_spec_fits(classes, self._num_classes(logits))
        if classes.ids is not None:  # the same ids for every image: [1, K] broadcast to [N, K]
            rows = em.Concat(em.shape(logits, 0, 1), em.ints([1]), axis=0)
            return em.Expand(em.const(np.array([classes.ids], dtype=np.int64)), rows)
        assert classes.rule is not None
        with_min = classes.rule.endswith("+min")
        top = classes.k - int(with_min)
        if em.opset >= 10:
            _, picked = em.op_multi("TopK", [logits, em.ints([top])], 2, axis=1)
        else:
            _, picked = em.op_multi("TopK", [logits], 2, axis=1, k=top)
        if with_min:
            picked = em.Concat(picked, em.ArgMin(logits, axis=1, keepdims=1), axis=1)
        return picked

    def _one_hot(self, class_ids: ir.Value, logits: ir.Value) -> ir.Value:
        em = self.em
        classes = em.const(np.arange(self._num_classes(logits), dtype=np.int64))
        rows = em.unsqueeze(em.Transpose(class_ids, perm=[1, 0]), [2])  # [K, N, 1]
        return em.cast_like(em.Equal(rows, classes), self.clf.logits_source)  # typed, unlike emitted values

    def _batch_image(self, kind: str, steps: int, baseline: float, samples: int, noise: float,
                     step_batch: int | None) -> Steps:
        """Feed the forward [(B + 1) * N, ...]: the image, then the B points (export/steps.py)."""
        em, image = self.em, self.image
        dims = list(image.shape or [])
        if dims and isinstance(dims[0], int):
            method, what = _BATCHED[kind]
            raise UsageError(f"{method} runs its {what} as one batch, but the model's batch axis is fixed "
                             f"to {dims[0]}: export the model with a dynamic batch axis")
        user = ir.Value(name=image.name, type=image.type, shape=image.shape)
        image.name = f"{image.name}_batched"
        inputs = self.graph.inputs
        inputs[inputs.index(image)] = user
        self.image = user
        batch = batch_steps(em, user, kind, steps=steps, baseline=baseline, samples=samples, noise=noise,
                            seed=self.seed, step_batch=step_batch)
        if batch.step_input is not None:
            inputs.append(batch.step_input)
        batched = batch.batched
        batched.type = image.type
        batched.shape = ir.Shape(["steps_x_N", *dims[1:]])
        image.replace_all_uses_with(batched)
        self.wrt = batched  # the forward now reads the batch; the old input value is gone
        return batch

    def _seed_blocks(self, seed: ir.Value, weights: ir.Value) -> ir.Value:
        """[K, N, C] -> [K, (B + 1) * N, C], block b weighted by weights[b]."""
        em = self.em
        scaled = em.Mul(em.unsqueeze(seed, [1]), em.Reshape(weights, em.ints([1, -1, 1, 1])))
        return em.Reshape(scaled, em.ints([0, -1, self._num_classes(seed)]))


# batching kind -> (the method, what it stacks on the batch axis), for refusals
_BATCHED = {"interpolate": ("integrated_gradients", "steps"), "noise": ("smoothgrad", "samples"),
            "shap": ("gradient_shap", "samples"), "baseline": ("deeplift", "baseline"),
            "masks": ("occlusion and rise", "masked copies")}


def _rename_reserved(graph: ir.Graph) -> None:
    """Move the model's own values out of the way of varrt's reserved names."""
    values = list(graph.inputs) + list(graph.initializers.values()) + [v for n in graph for v in n.outputs]
    for v in values:
        if v.name in RESERVED_OUTPUTS or v.name in RESERVED_INPUTS:
            v.name = f"{v.name}_model"


def _finish(clf: Classifier, outputs: dict[str, ir.Value], options: dict, k: int | str) -> onnx.ModelProto:
    """The graph's outputs declared (``k``: the number of classes when the graph fixes it), the
    target's passes run, and the model serialised with varrt's metadata."""
    graph = clf.model.graph
    image_dtype = clf.data_input.dtype
    assert image_dtype is not None  # load_classifier picked the one input with a float dtype
    ordered = [LOGITS, ATTRIBUTIONS, VAR_ATTRIBUTIONS]
    if options["classes"] is not None:
        ordered.append(CLASS_IDS)
    graph.outputs.clear()
    for key in ordered:
        if key not in outputs:
            continue
        value = outputs[key]
        if value.is_graph_input() or value.is_graph_output() or value.name == key and value.producer() is None:
            value = Emitter(graph, clf.opset).Identity(value)
        value.name = key
        value.type = ir.TensorType(ir.DataType.INT64 if key == CLASS_IDS else image_dtype)
        value.shape = _output_shape(key, clf, options, k)
        graph.outputs.append(value)
    ir_passes.RemoveUnusedNodesPass()(clf.model)
    optimize(clf.model, options["target"])
    # Methods that batch the image emit its batching after the forward that reads it; ONNX (and
    # TensorRT's parser) want producers first.
    ir_passes.TopologicalSortPass()(clf.model)
    ir_passes.NameFixPass()(clf.model)
    proto = ir.serde.serialize_model(clf.model)
    # The lowest IR version the opsets allow: runtimes lag behind onnx's newest IR version.
    # Custom domains (a vendor op off the gradient path) are unknown to onnx.helper: skip them.
    known = [o for o in proto.opset_import if (o.domain or "ai.onnx", o.version) in onnx.helper.OP_SET_ID_VERSION_MAP]
    proto.ir_version = max(7, onnx.helper.find_min_ir_version_for(known))
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    proto.producer_name, proto.producer_version = "varrt", __version__
    for key, value in options.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"varrt.{key}", str(value)
    return proto


def _output_shape(key: str, clf: Classifier, options: dict, k: int | str = "K") -> ir.Shape:
    image = list(clf.data_input.shape or [])
    batch = image[0] if image else "N"
    if key == LOGITS:
        dims = list(clf.logits_source.shape or [])[1:]
        sizes = [d for d in dims if isinstance(d, int)]
        classes = int(np.prod(sizes)) if dims and len(sizes) == len(dims) else "C"
        return ir.Shape([batch, classes])
    if key == CLASS_IDS:
        return ir.Shape([batch, k])
    spec = METHOD_TABLE[options["method"]]
    if spec.pixel_map:  # a CAM or RISE map is [H, W] per class, whatever the image's layout
        _, h_axis, w_axis = image_layout.channels_height_width(options["layout"], [0, 1, 2, 3])
        return ir.Shape([batch, k, image[h_axis], image[w_axis]])
    tail = image[1:]
    return ir.Shape([batch, k, *tail])

