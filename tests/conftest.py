"""The test suite's root conftest. Its only job: being here puts tests/ on sys.path (pytest's default
"prepend" import mode inserts a conftest's folder), so every test can ``import testbed``, the shared
tiny models and helpers. It must stay free of heavy imports: the pure-ONNX rule tests run without
torch."""
