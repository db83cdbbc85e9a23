"""The status page in a real browser: Debian's headless Chromium, driven by Playwright, against the
`web` process while a real worker transcribes real speech with the real model.

Chromium comes from Debian (`apt-get install chromium`; `.ci/run` installs it), never from
`playwright install`, which downloads. Without it these tests fail and say so: they are not skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.queue.db import connect
from daemon.queue.jobs import JobQueue
from daemon.queue.summary import clock
from tests.daemon_proc import start, stop
from tests.speech import meeting

CHROMIUM = os.environ.get("WHISPER_DAEMON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
SCREENSHOTS = os.environ.get("WHISPER_DAEMON_SCREENSHOTS")  # a folder to keep the screenshots in (docs/)
# A cue is highlighted from its start to its end; the page checks the audio's time on every frame
# and at each timeupdate, so what it shows may lag the clock it is compared with by this much.
LAG_SECONDS = 0.35


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian; .ci/run does it), or set "
                    "WHISPER_DAEMON_CHROMIUM to a Chromium or Chrome binary", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield launched
        launched.close()


def serve(env: dict[str, str], tmp_path: Path, *extra: str) -> tuple[Any, str]:
    """`whisper-daemon web --port 0` and the address it printed."""
    output = tmp_path / f"web{len(list(tmp_path.glob('web*.out')))}.out"
    proc = start("web", env, "--port", "0", *extra, output=output)
    deadline = time.monotonic() + 60
    while not (found := re.search(r"status page: (http://\S+)", output.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.1)
    return proc, found.group(1)


def until(page: Any, expression: str, seconds: float) -> None:
    """Poll `expression` in the page until true (not wait_for_function: it evals, which the page's CSP forbids)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {expression}"
        page.wait_for_timeout(100)


def shot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    if SCREENSHOTS:
        shutil.copy(tmp_path / name, Path(SCREENSHOTS) / name)


@pytest.mark.slow
def test_queue_follows_a_real_transcription_then_the_transcript_plays(
        browser: Any, daemon_env: dict[str, str], tmp_path: Path) -> None:
    recording = meeting(120, seed=3)  # twelve 10-s windows: long enough for the 2-s poll to see several on a fast CPU
    path = recording.write(tmp_path / "inbox" / "Weekly <planning> meeting.flac")
    env = {**daemon_env, "WHISPER_DAEMON_CHUNK_SECONDS": "10", "WHISPER_DAEMON_FORMATS": "srt,vtt,txt,json"}
    job = JobQueue(connect(env["WHISPER_DAEMON_DB"]), inbox=tmp_path / "inbox").enqueue(path).job
    web, url = serve(env, tmp_path)
    worker = start("work", env, "--exit-when-empty", output=tmp_path / "work.out")
    responses: list[tuple[str, int]] = []
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.on("response", lambda r: responses.append((r.url, r.status)))
        page.goto(url + "/")
        page.evaluate("window.notReloaded = true")
        row = page.locator(f'tr[data-job="{job.id}"]')
        seen: list[float] = []
        deadline = time.monotonic() + 1200  # a 2-minute recording; a CI machine busy with other work is slow
        while "done" not in (row.get_attribute("class") or ""):
            assert time.monotonic() < deadline and worker.poll() in (None, 0), (tmp_path / "work.out").read_text()
            progress = row.locator("progress")
            if progress.count():
                value = float(progress.get_attribute("value") or 0)
                if not seen or value != seen[-1]:
                    seen.append(value)
                    if len(seen) == 2:
                        shot(page, tmp_path, "web-queue.png")
            page.wait_for_timeout(250)
        assert page.evaluate("window.notReloaded") is True  # it updated itself
        assert len([v for v in seen if 0 < v < 1]) >= 2 and seen == sorted(seen), seen
        facts = row.inner_text().split("\t")
        assert "en" in facts and "tiny.en" in facts and clock(recording.seconds) in facts, facts
        assert "<planning>" in row.inner_text()  # the name shown as text

        row.locator("a").click()
        page.wait_for_selector("#cues li")
        cues = page.locator("#cues li")
        assert cues.count() >= 5
        text = " ".join(cues.all_inner_texts()).lower()
        spoken = {w.strip(".,?!").lower() for _, _, sentence in recording.spans for w in sentence.split()}
        assert len(spoken & set(re.findall(r"[a-z']+", text))) > 0.6 * len(spoken)  # its own words
        for fmt in ("srt", "vtt", "txt", "json"):
            assert page.locator(f'a[href="/jobs/{job.id}/files/{fmt}"]').count() == 1

        cues.nth(2).click()  # plays from the third cue
        start_at = float(cues.nth(2).get_attribute("data-start"))
        until(page, "document.getElementById('player').currentTime > %f" % (start_at + 1.0), 30)
        checked = 0
        for _ in range(12):
            state = page.evaluate("""() => {
                const now = document.querySelector('#cues li.now');
                return {t: document.getElementById('player').currentTime,
                        start: now && Number(now.dataset.start), end: now && Number(now.dataset.end),
                        gaps: Array.from(document.querySelectorAll('#cues li')).map(li => [Number(li.dataset.start), Number(li.dataset.end)])};
            }""")
            t = state["t"]
            if state["start"] is None:  # between two cues: none may be shown then
                assert not any(s <= t - LAG_SECONDS and t + LAG_SECONDS < e for s, e in state["gaps"]), state["t"]
            else:
                assert state["start"] - LAG_SECONDS <= t < state["end"] + LAG_SECONDS, (t, state["start"], state["end"])
                checked += 1
            page.wait_for_timeout(400)
        assert checked >= 6
        assert page.evaluate("document.getElementById('player').currentTime") > start_at + 4  # it played on
        shot(page, tmp_path, "web-transcript.png")

        late = cues.nth(cues.count() - 2)  # seeking: a click far ahead
        late.click()
        late_start = float(late.get_attribute("data-start"))
        until(page, "document.querySelector('#cues li.now') !== null && "
                    "Number(document.querySelector('#cues li.now').dataset.start) === %s" % late_start, 10)
        assert abs(page.evaluate("document.getElementById('player').currentTime") - late_start) < 2
        assert any(f"/jobs/{job.id}/recording" in u and status == 206 for u, status in responses), responses
    finally:
        stop(worker)
        stop(web)


@pytest.mark.slow
def test_the_browser_sees_html_names_as_text_and_the_token_page(
        browser: Any, daemon_env: dict[str, str], tmp_path: Path) -> None:
    """A name made to run a script does not run in a real browser; a page served beyond loopback
    without a token says that one is required."""
    name = "<img src=x onerror=window.hacked=1><script>window.hacked=2<script>.wav"
    path = tmp_path / "inbox" / name
    path.write_bytes(b"not audio at all")
    JobQueue(connect(daemon_env["WHISPER_DAEMON_DB"]), inbox=tmp_path / "inbox").enqueue(path)
    web, url = serve(daemon_env, tmp_path)
    try:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_timeout(2500)  # one live update too
        assert page.evaluate("window.hacked") is None
        assert name in page.locator("td.name").first.inner_text()
    finally:
        stop(web)
    open_web, open_url = serve(daemon_env, tmp_path, "--host", "0.0.0.0")
    try:
        page = browser.new_page()
        page.goto(open_url.replace("0.0.0.0", "127.0.0.1") + "/")
        assert "A token is required" in page.content() and name not in page.content()
    finally:
        stop(open_web)
