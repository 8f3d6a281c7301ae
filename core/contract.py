"""The explanation graph's contract (DESIGN.md): the names users and benchmarks rely on.

``varrt export`` and ``varrt.export.explain_graph`` write a graph with the model's own inputs plus
``class_ids`` (int64 [N, K], unless a class rule is built in) and the outputs ``logits``,
``attributions`` and, with VAR in the graph, ``var_attributions`` (and ``class_ids`` when the graph
chooses the classes itself). A model value that already has one of these names is renamed.
"""

#: int64 [N, K]: the classes explained per image (an input, or an output when the graph picks them).
CLASS_IDS = "class_ids"
#: float [N, num_classes]: the pre-softmax scores.
LOGITS = "logits"
#: float [N, K, *image.shape[1:]] ([N, K, H, W] for CAMs).
ATTRIBUTIONS = "attributions"
#: VAR of ``attributions``, same shape.
VAR_ATTRIBUTIONS = "var_attributions"

RESERVED_INPUTS = (CLASS_IDS,)
RESERVED_OUTPUTS = (LOGITS, ATTRIBUTIONS, VAR_ATTRIBUTIONS, CLASS_IDS)

#: The default-domain opsets the exporter reads and emits (in-graph VAR included).
MIN_OPSET, MAX_OPSET = 9, 25
