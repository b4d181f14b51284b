"""A failed test's changes where CI reads them: pytest-html's report and JUnit XML.

Neither pytest-html nor the JUnit writer is needed: the changes are attached as plain data.

- **pytest-html** shows ``report.extras``, but collects them in its own
  ``pytest_runtest_makereport`` wrapper (``tryfirst``, so it wraps ours): an extra added after
  that hook, in ``pytest_runtest_logreport`` say, is dropped.  The plugin's own report wrapper
  calls :func:`attach` before returning, so the extra is there when pytest-html looks.  The
  extra is the dict ``pytest_html.extras.html()`` returns, built here so that pytest-html stays
  optional; it is a collapsible ``<details>`` block.
- **JUnit XML** (``--junitxml``) writes a test case's ``user_properties`` as ``<property>``
  elements, from the teardown phase's report, which copies the item's.  The changes go there
  under the section's title.

Both are JSON-able, so they reach the controller from xdist workers unchanged.
"""

from __future__ import annotations

import html
import re

import pytest

__all__ = ["attach", "plain"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """*text* without the terminal's colour codes."""
    return _ANSI.sub("", text)


def _html_extra(title: str, text: str) -> dict[str, str | None]:
    content = (
        f'<details class="pytest-overlay-changes" open><summary>{html.escape(title)}</summary>'
        f"<pre>{html.escape(text)}</pre></details>"
    )
    # The shape of pytest_html.extras.html(content).
    return {
        "name": title,
        "format_type": "html",
        "content": content,
        "mime_type": None,
        "extension": None,
    }


def attach(item: pytest.Item, report: pytest.TestReport, section: tuple[str, str]) -> None:
    """Attach a failed phase's *section* (title, text) to pytest-html's extras and to the
    JUnit properties of *report*'s test."""
    title, text = section[0], plain(section[1])
    if item.config.pluginmanager.hasplugin("html"):
        extras = list(getattr(report, "extras", []))
        extras.append(_html_extra(title, text))
        report.extras = extras  # type: ignore[attr-defined]  # pytest-html's attribute
    # Setup and call only (a teardown has no section): the teardown report, which JUnit
    # reads, copies the item's properties when it is made.
    item.user_properties.append((title, text))
