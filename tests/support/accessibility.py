"""Accessibility checks for the browser tests: axe-core, injected into the page under test.

``scripts/setup.sh test`` installs the axe-core npm package into the virtualenv; a missing
package is a failure, never a skipped check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Page

AXE = Path(sys.prefix) / "axe/node_modules/axe-core/axe.min.js"
#: The impacts that fail a page; "minor" and "moderate" ones are reported, not fatal.
FATAL = ("serious", "critical")


def axe_violations(page: Page) -> list[dict]:
    """Every axe-core violation on the page as it is now (WCAG 2.1 A and AA, best practices)."""
    if not AXE.is_file():
        raise AssertionError(f"axe-core is not installed at {AXE}: run scripts/setup.sh test")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => await axe.run(document, {
            runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa",
                                            "best-practice"]},
        })"""
    )
    return result["violations"]


def assert_accessible(page: Page) -> None:
    """Fail with a readable list when axe-core finds a serious or critical violation."""
    fatal = [v for v in axe_violations(page) if v["impact"] in FATAL]
    lines = [
        f"{v['impact']}: {v['id']}: {v['help']} ({len(v['nodes'])} element(s), e.g."
        f" {v['nodes'][0]['target']}: {v['nodes'][0]['failureSummary']!r})"
        for v in fatal
    ]
    assert not fatal, f"axe-core on {page.url}:\n" + "\n".join(lines)
