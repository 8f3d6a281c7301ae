"""varrt.export: ONNX-to-ONNX reverse-mode autodiff and the explanation methods."""
