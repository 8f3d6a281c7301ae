"""varrt: class-relevant saliency maps (VAR) for any ONNX image classifier.

>>> import varrt
>>> explainer = varrt.Explainer(varrt.demo_model_path())      # doctest: +SKIP
>>> explanation = explainer(images)                            # doctest: +SKIP
"""

__version__ = "0.1.0"
