"""The report in a real browser: headless Chromium loads every figure, logs no error.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
the browser reads NUL-terminated JSON commands on fd 3 and writes replies and events
on fd 4), so only the standard library is needed. The test is skipped, saying why,
where the Debian ``chromium`` package is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from twodtm.io.mrc import write_mrc
from twodtm.io.results import (
    MAP_NAMES,
    MatchMetadata,
    MatchResult,
    RunRecord,
    SearchSpaceSummary,
)
from twodtm.io.tables import write_star_table
from twodtm.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Generous: a loaded CI machine may take long to start a browser; nothing here
# depends on how fast it is, the limit only stops a hung browser.
TIMEOUT_S = 120.0
SHAPE = (96, 128)
BOX = 16
PLANTED = np.array([[20, 25], [64, 30], [100, 60], [40, 70]])
FIGURES = {
    "micrograph.png",
    "zscore.png",
    "mip.png",
    "histogram.png",
    "defocus.png",
    "truth.png",
    "recall_precision.png",
}
# Reads, once every image has decoded, what a reader of the page would see.
_PAGE_STATE = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((im) => im.decode().catch(() => null)));
  return JSON.stringify({
    title: document.title,
    h1: document.querySelector("h1")?.textContent ?? "",
    viewport: document.documentElement.clientWidth,
    scrollWidth: document.documentElement.scrollWidth,
    images: images.map((im) => ({
      alt: im.alt,
      complete: im.complete,
      naturalWidth: im.naturalWidth,
      naturalHeight: im.naturalHeight,
      shownWidth: im.getBoundingClientRect().width,
      shownHeight: im.getBoundingClientRect().height,
    })),
  });
})()
"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (/usr/bin/chromium); install the Debian "
    "package `chromium` (.ci/run does) to test the report in a browser",
)


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, process: subprocess.Popen[bytes], write_fd: int, read_fd: int):
        self.process = process
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                raise TimeoutError("Chromium stopped answering on the DevTools pipe")
            ready, _, _ = select.select([self.read_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise TimeoutError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str = ""
    ) -> dict[str, Any]:
        """Send one command and return its result; events met on the way are kept."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method}
        command["params"] = params or {}
        if session:
            command["sessionId"] = session
        os.write(self.write_fd, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        """Return the first event named ``method`` (kept or still to come)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == method:
                return message


def _high_fd(fd: int) -> int:
    """Move ``fd`` to a number >= 10, clear of the fds 3 and 4 it is bound to."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _start_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], DevTools]:
    commands_r, commands_w = (_high_fd(fd) for fd in os.pipe())
    replies_r, replies_w = (_high_fd(fd) for fd in os.pipe())
    browser_args = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    # A trampoline binds the pipe ends to fds 3 and 4 after Popen has closed every
    # other descriptor, then becomes Chromium (exec); dash cannot name fds >= 10.
    trampoline = (
        "import os, sys; "
        f"os.dup2({commands_r}, 3); os.dup2({replies_w}, 4); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", trampoline, *browser_args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(commands_r, replies_w),
    )
    os.close(commands_r)
    os.close(replies_w)
    return process, DevTools(process, commands_w, replies_r)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """A headless Chromium with a fresh profile, closed (or killed) afterwards."""
    process, tools = _start_chromium(tmp_path / "profile")
    try:
        yield tools
    finally:
        try:
            tools.call("Browser.close")
            process.wait(timeout=30)
        except (TimeoutError, RuntimeError, OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        os.close(tools.write_fd)
        os.close(tools.read_fd)


def _result_with_truth(directory: Path) -> tuple[Path, Path]:
    """A result whose z-score map holds peaks at ``PLANTED``, and a truth table."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    zscore = rng.normal(3.0, 0.3, SHAPE)
    image = rng.normal(0.0, 1.0, SHAPE)
    for k, (x, y) in enumerate(PLANTED):
        r2 = (cols - x) ** 2 + (rows - y) ** 2
        zscore += (9.0 + k) * np.exp(-r2 / (2 * 1.2**2))
        image -= 2.0 * np.exp(-r2 / (2 * 5.0**2))
    maps = {name: np.zeros(SHAPE, np.float32) for name in MAP_NAMES}
    maps["zscore"] = zscore.astype(np.float32)
    maps["mip"] = (0.02 * zscore).astype(np.float32)
    maps["defocus"] = np.full(SHAPE, 9000.0, np.float32)
    write_mrc(directory / "micrograph.mrc", image.astype(np.float32), 2.0)
    metadata = MatchMetadata(
        config={
            "micrograph": str(directory / "micrograph.mrc"),
            "template": "template.mrc",
            "optics": {"pixel_size": 2.0, "defocus_u": 9000.0, "defocus_v": 9000.0},
        },
        search_space=SearchSpaceSummary(
            orientations=50, defocus_values=3, pixel_sizes=1, correlations_per_pixel=150
        ),
        image_shape=SHAPE,
        run=RunRecord(run_time_s=1.0, devices=("cpu",)),
        config_yaml="micrograph: micrograph.mrc\ntemplate: template.mrc\n",
        template_size=BOX,
    )
    result = MatchResult(maps, 2.0, metadata).save(directory / "result")
    # Truth: three of the planted peaks and one empty place (a miss).
    truth = pd.DataFrame(
        np.vstack([PLANTED[:3], [[110, 15]]]).astype(float), columns=["x", "y"]
    )
    write_star_table(truth, directory / "truth.star")
    return result, directory / "truth.star"


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors and warnings, uncaught exceptions and failed loads."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "warning",
            "assert",
        ):
            texts = [str(a.get("value", a.get("description"))) for a in params["args"]]
            found.append(f"console.{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in (
            "error",
            "warning",
        ):
            found.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params.get('errorText')}")
    return found


def _open(browser: DevTools, page: Path) -> tuple[dict[str, Any], list[str], Any]:
    """Load ``page`` in a new tab; return its state, its problems and a screenshot."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})
    session = browser.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.events.clear()
    browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
    browser.wait_for("Page.loadEventFired")
    state = json.loads(
        browser.call(
            "Runtime.evaluate",
            {"expression": _PAGE_STATE, "awaitPromise": True, "returnByValue": True},
            session,
        )["result"]["value"]
    )
    shot = browser.call(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True},
        session,
    )
    with Image.open(io.BytesIO(base64.b64decode(shot["data"]))) as im:
        screenshot = np.asarray(im.convert("L"), dtype=np.float64)
    events = [e for e in browser.events if e.get("sessionId") == session]
    browser.call("Target.closeTarget", {"targetId": target["targetId"]})
    return state, _problems(events), screenshot


def test_report_renders_every_figure_without_console_errors(
    tmp_path: Path, browser: DevTools
) -> None:
    result, truth = _result_with_truth(tmp_path)
    page = write_report(result, truth=truth)
    record = json.loads((result / "report.json").read_text())
    assert set(record["pictures"]) == FIGURES
    state, problems, screenshot = _open(browser, page)

    assert problems == []
    assert state["title"] == "twodtm report: micrograph.mrc"
    assert state["h1"] == state["title"]
    images = state["images"]
    assert len(images) == len(FIGURES)
    # Every PNG decoded at its size on disk, and is laid out at a visible size
    # that fits the page (no horizontal scrolling).
    on_disk = {}
    for name in FIGURES:
        with Image.open(result / name) as im:
            on_disk[name] = im.size
    assert sorted((im["naturalWidth"], im["naturalHeight"]) for im in images) == (
        sorted(on_disk.values())
    )
    for im in images:
        assert im["complete"], im["alt"]
        assert im["naturalWidth"] > 200, im["alt"]
        assert 100 < im["shownWidth"] <= state["viewport"], im["alt"]
        ratio = im["naturalHeight"] / im["naturalWidth"]
        assert im["shownHeight"] == pytest.approx(im["shownWidth"] * ratio, abs=2)
    assert state["scrollWidth"] <= state["viewport"]
    # The page as drawn is taller than its figures and not blank.
    assert screenshot.shape[0] > sum(im["shownHeight"] for im in images)
    assert screenshot.std() > 10.0

    # The same checks see a figure that does not decode and a script's error.
    text = page.read_text(encoding="utf-8")
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = text[:start] + "AAAA" + text[start + 400 :]
    broken = broken.replace("</body>", "<script>console.error('planted')</script>")
    (result / "broken.html").write_text(broken, encoding="utf-8")
    state, problems, _ = _open(browser, result / "broken.html")
    widths = sorted(im["naturalWidth"] for im in state["images"])
    assert widths[0] == 0
    assert widths[1] > 200
    assert problems == ["console.error: planted"]
