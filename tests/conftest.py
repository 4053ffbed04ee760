"""Shared test helpers."""

import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def require_tool(name: str) -> str:
    """Path of a system tool; skip when it is missing, fail under DIFFRES_REQUIRE_SYSTEM_TOOLS=1."""
    path = shutil.which(name)
    if path is None:
        message = f"system tool {name!r} is not installed"
        if os.environ.get("DIFFRES_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(message + " (DIFFRES_REQUIRE_SYSTEM_TOOLS=1)")
        pytest.skip(message)
    return path
