"""Every picture the README shows is in the repository, and each is a real PNG: a page for
the screenshots, the bench's plot at a readable size."""

from __future__ import annotations

import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOWN = re.compile(r"!\[[^\]]+\]\(([^)\s]+\.png)\)")


def test_the_readme_shows_the_four_screenshots_the_issue_asks_for() -> None:
    shown = SHOWN.findall((REPO / "README.md").read_text(encoding="utf-8"))
    names = {Path(p).name for p in shown}
    assert {"chat-light.png", "chat-dark.png", "admin-users.png", "admin-usage.png"} <= names
    for rel in shown:
        png = (REPO / rel).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{rel} is not a PNG"
        width, height = struct.unpack(">II", png[16:24])
        if rel.startswith("bench/"):  # a plot `make bench` draws (bench/curves.py)
            assert width >= 600 and height >= 300, f"{rel} is {width}x{height}"
            continue
        assert width >= 1000 and height >= 600, f"{rel} is {width}x{height}: not a page"
