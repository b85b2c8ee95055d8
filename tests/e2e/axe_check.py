"""axe-core for the page tests: the axe.min.js bundled in the `axe-playwright-python` test
dependency (setup.cfg, extra `test`; never shipped in deepseekd/), injected into a page
through the DevTools protocol (page.evaluate), so the page's Content-Security-Policy stays
as served. `axe_violations` runs the WCAG 2.0/2.1 A and AA rules on the page as it is now
and returns the violations at or above an impact; `assert_accessible` fails with each
one's rule id, impact, target selectors and help URL, and keeps every finding (all impacts)
in test-artifacts/web/axe-<name>.json."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from tests.e2e.web_fixtures import ARTIFACTS

TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
IMPACTS = ["minor", "moderate", "serious", "critical"]
FAILING = ("serious", "critical")


@cache
def axe_source() -> str:
    return resources.files("axe_playwright_python").joinpath("axe.min.js").read_text("utf-8")


def axe_version() -> str:
    m = re.search(r"axe v(\d+\.\d+\.\d+)", axe_source()[:200])
    return m.group(1) if m else "unknown"


RUN = """async (tags) => {
  const r = await window.axe.run(document, {
    runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
  return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
    helpUrl: v.helpUrl, targets: v.nodes.map((n) => n.target.join(" ")),
    summaries: v.nodes.map((n) => n.failureSummary) }));
}"""


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Every WCAG A/AA violation axe finds on the page now (all impacts)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    return page.evaluate(RUN, TAGS)


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} — {v['helpUrl']}")
        for target, summary in zip(v["targets"], v["summaries"], strict=True):
            first = (summary or "").strip().splitlines()[1:2]
            lines.append(f"    {target}  {first[0].strip() if first else ''}")
    return "\n".join(lines)


def assert_accessible(page: Any, name: str) -> list[dict[str, Any]]:
    """No serious or critical axe violation on the page now; returns the lesser ones."""
    found = axe_violations(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"axe-{name}.json").write_text(
        json.dumps({"axe": axe_version(), "url": page.url, "violations": found}, indent=1)
    )
    bad = [v for v in found if v["impact"] in FAILING]
    assert not bad, f"axe {axe_version()} on {name} ({page.url}):\n{describe(bad)}"
    return found
