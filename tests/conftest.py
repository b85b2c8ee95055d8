"""Suite-wide: tests marked cpu_only or gpu_only run only on that kind of box
(tests/support/box.py decides which this is)."""

from __future__ import annotations

import pytest

from tests.support import box


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = box.on_gpu()
    for item in items:
        if gpu and item.get_closest_marker("cpu_only"):
            item.add_marker(pytest.mark.skip(reason="what the CPU engine does; this box runs "
                                                    "the GPU build"))
        if not gpu and item.get_closest_marker("gpu_only"):
            item.add_marker(pytest.mark.skip(reason="needs the GPU build of vLLM and an "
                                                    "NVIDIA GPU"))
