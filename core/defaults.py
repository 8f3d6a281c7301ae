"""Defaults written once: VAR's temperature and threshold (the paper's), its scale modes, the
method and classes an explanation uses unless told otherwise.

    M = softmax(TEMPERATURE * |A|, over the K classes)
    VAR_k = A_k * M_k * [M_k - 1/K > TAU]
"""

#: VAR softmax temperature T (the paper's default).
TEMPERATURE = 10.0
#: VAR threshold tau on M_k - 1/K (the paper's demo).
TAU = 0.01
#: What T multiplies: "none" = raw |A| (the paper), "max" = |A| over each image's largest |A|.
VAR_SCALES = ("none", "max")
VAR_SCALE = "none"

#: The attribution method and class spec of ``varrt explain`` and ``varrt.Explainer``.
METHOD = "guided_backprop"
#: The 4 most likely classes and the least likely one (K = 5).
CLASSES = "top4+min"
