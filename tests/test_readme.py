"""README's Python example runs as written, and the public API stays what it says."""

from __future__ import annotations

import re
from pathlib import Path

import varrt
import varrt.export
import varrt.kernels

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VARRT_CACHE_DIR", str(tmp_path))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "(2, 5) (2, 5, 3, 224, 224)" in capsys.readouterr().out


def test_public_api():
    assert varrt.__all__ == ["Explainer", "Explanation", "__version__"]
    assert varrt.export.__all__ == ["METHODS", "explain_graph"]
    assert varrt.export.METHODS == ("gradient", "input_x_gradient", "guided_backprop", "integrated_gradients",
                                    "smoothgrad", "gradcam", "guided_gradcam")
    assert varrt.kernels.__all__ == ["append_var", "var_maps"]
