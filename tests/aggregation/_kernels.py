"""Shared by the native kernels' tests: whether a compiler is here, and a fake one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HAS_COMPILER = shutil.which(os.environ.get("CXX") or "c++") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


def fake_compiler(folder: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CXX`` set to a shell script standing in for the compiler."""
    compiler = folder / "fake-c++"
    compiler.write_text(f"#!/bin/sh\n{script}\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
