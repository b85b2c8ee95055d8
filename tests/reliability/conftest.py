"""The reliability suite: faults, hostile input, load. Every test here is marked
``reliability`` (make test-reliability runs them all); the ones too long for make test are
also marked ``soak``, which make test leaves out."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
