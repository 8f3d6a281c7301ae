"""The public-architecture sweep: ``python -m varrt.bench.zoo``.

Builds public classifiers with random weights (timm through both torch exporters, Keras
applications through tf2onnx, Paddle vision models through paddle2onnx), exports each in three
forms (static, dynamic batch, dynamic height and width), explains each export with varrt and
checks the attributions against the framework's own autodiff in float64. Writes a compatibility
matrix (Markdown, CSV, JSON) and, resumably, one JSON line per checked cell.

Frameworks are optional extras (``keras``, ``zoo-paddle``; timm comes with ``test``); each lives
in its own module (torch_zoo, keras_zoo, paddle_zoo), imported only when its models are swept.
"""
