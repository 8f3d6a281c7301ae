"""Shared fixtures for the export tests: EfficientNet-Lite0 is loaded and exported once per session.

Nothing here imports torch at import time, so the pure-ONNX tests (test_rules.py and others) run
where torch is not installed; the fixtures that need it skip with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import pytest

if TYPE_CHECKING:
    from torch import nn


def _torch_models() -> Any:
    pytest.importorskip("torch", reason="the PyTorch models need torch")
    import torch_models

    return torch_models


@pytest.fixture(scope="session")
def effnet() -> nn.Module:
    return _torch_models().efficientnet_lite0()


@pytest.fixture(scope="session")
def effnet_onnx_path(effnet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 by the TorchScript exporter (opset 17, dynamic batch), saved to disk."""
    tm = _torch_models()
    path = tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.onnx"
    onnx.save_model(tm.export_torchscript(effnet, tm.EFFICIENTNET_INPUT), path)
    return path


@pytest.fixture(scope="session")
def effnet_onnx(effnet_onnx_path: Path) -> onnx.ModelProto:
    return onnx.load_model(effnet_onnx_path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the measured errors (max relative error per model and exporter, etc.) after the run,
    when a test module imported torch_models (and so recorded some)."""
    tm = sys.modules.get("torch_models")
    for title, table in getattr(tm, "RESULTS", {}).items():
        rows = sorted({r for r, _ in table})
        cols = sorted({c for _, c in table})
        terminalreporter.section(title)
        terminalreporter.write_line(f"{'':40s}" + "".join(f"{c:>16s}" for c in cols))
        for r in rows:
            cells = "".join(f"{table[(r, c)]:16.2e}" if (r, c) in table else f"{'-':>16s}" for c in cols)
            terminalreporter.write_line(f"{r:40s}{cells}")
