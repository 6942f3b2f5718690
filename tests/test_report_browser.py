"""A study's report.html in a real headless browser: every plot decodes to an image.

Skipped when no Chromium or Chrome binary is on PATH (.ci/run installs Debian's chromium).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from fedmtl.report.report import write_report
from tests.helpers import TAG_VAR, stop_tagged, tagged_processes
from tests.study._study import write_study

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(BROWSER is None, reason=f"no browser binary on PATH ({', '.join(BROWSERS)})")

# Appended to a copy of the report: once the page has loaded, writes what the browser made of each
# <img> into the DOM, which --dump-dom then prints (a dumped DOM is the only output a plain
# headless run gives back).
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images, (img) => ({
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  }));
  const probe = document.createElement("pre");
  probe.id = "image-probe";
  probe.textContent = JSON.stringify(images);
  document.body.appendChild(probe);
});
</script>"""


def dump_dom(page: Path, profile: Path) -> str:
    """The page's DOM after load, from a headless browser run as a tagged process group that is
    gone (every process, renderers and zygotes included) when this returns."""
    assert BROWSER is not None
    tag = uuid.uuid4().hex
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **{TAG_VAR: tag}),
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{BROWSER} did not finish within {TIMEOUT_S} s")
    finally:
        stop_tagged(tag, grace_s=10.0)
        assert not tagged_processes(tag), "browser processes outlived the test"
    assert process.returncode == 0, f"{BROWSER} exited with {process.returncode}:\n{err[-2000:]}"
    return out


def test_every_plot_loads_in_a_browser(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    summary = write_report(root)
    report = (root / "report.html").read_text()
    assert report.count("</body>") == 1
    page = tmp_path / "probe.html"
    page.write_text(report.replace("</body>", PROBE + "\n</body>"))

    dom = dump_dom(page, tmp_path / "profile")

    match = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
    assert match, f"the page did not finish loading; dumped DOM starts: {dom[:500]!r}"
    images = json.loads(html.unescape(match.group(1)))
    assert len(summary["plots"]) >= 5
    assert len(images) >= len(summary["plots"]), f"{len(images)} images for plots {sorted(summary['plots'])}"
    broken = [
        image["alt"] for image in images if not (image["complete"] and image["width"] > 0 and image["height"] > 0)
    ]
    assert not broken, f"images that did not load: {broken}"
