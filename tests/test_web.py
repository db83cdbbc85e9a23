"""The status page (daemon/web) over HTTP, in-process: what it shows, what it serves and to whom,
its actions, and that it reads without locking the queue. The browser tests are in test_web_browser.py."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.queue.db import JobStatus, try_lock
from daemon.queue.standby import WATCHER_LOCK
from tests.conftest import REPO
from tests.web import LOCAL, Site, make_site

WORDS = [(0.0, 0.5, " Good"), (0.5, 1.0, " morning"), (1.2, 1.8, " everyone.")]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no action form"
    return found.group(1)


# ------------------------------------------------------------------ what the pages show

def test_queue_page_lists_every_state_with_its_facts(site: Site) -> None:
    done = site.done("meeting.wav", WORDS)
    failed = site.failed("broken.m4a", "not audio: the file holds no audio stream")
    queued = site.queued("team/later.mp3")
    page = site.client().get("/")
    assert page.status_code == 200
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r'<tr class="job \w+" data-job="(\d+)">.*?</tr>',
                                                              page.text, re.S)}
    assert set(rows) == {done.id, failed.id, queued.id}
    assert "meeting.wav" in rows[done.id] and ">en<" in rows[done.id] and "tiny.en" in rows[done.id]
    assert "0:02" in rows[done.id] and "<time datetime=" in rows[done.id]  # duration, finished
    assert "not audio: the file holds no audio stream" in rows[failed.id]
    assert "later.mp3" in rows[queued.id] and "team" in rows[queued.id]


def test_running_job_shows_progress_and_eta(site: Site) -> None:
    from daemon.transcript import Checkpoint, Segment, Window

    job = site.queued("long.wav")
    site.queue.claim("w")
    site.queue.save_window(job.id, "w", Window((Segment(0, 30, "x"),), Checkpoint(30.0), 30.0, 30.0), 120.0, 0.5,
                           "tiny.en", "fp32")
    row = re.search(r'data-job="%d">.*?</tr>' % job.id, site.client().get("/").text, re.S).group(0)
    assert '<progress max="1" value="0.250">' in row and "25%" in row
    assert "ETA 0:45" in row  # 90 s of audio left at 0.5 s a second


def test_filters_by_state_and_search_by_name(site: Site) -> None:
    site.done("Board meeting.wav", WORDS)
    site.failed("board notes.m4a", "not audio")
    site.queued("standup.wav")
    client = site.client()

    def names(query: str) -> set[str]:
        return {n.strip() for n in re.findall(r'<td class="name">(?:<a href="[^"]+">)?([^<]+)', client.get(f"/live?{query}").text)}

    assert names("") == {"Board meeting.wav", "board notes.m4a", "standup.wav"}
    assert names("q=BOARD") == {"Board meeting.wav", "board notes.m4a"}  # any case
    assert names("state=failed") == {"board notes.m4a"}
    assert names("state=done&q=notes") == set()
    assert names("q=%25") == set()  # a LIKE wildcard is searched for as itself


def test_pages_of_a_large_queue(site: Site) -> None:
    from daemon.web.pages import PAGE_SIZE

    for i in range(PAGE_SIZE + 5):
        site.queued(f"r{i:03d}.wav")
    client = site.client()
    first, second = client.get("/").text, client.get("/?page=1").text
    assert first.count('<tr class="job') == PAGE_SIZE and "older →" in first
    assert second.count('<tr class="job') == 5 and "r000.wav" in second and "r000.wav" not in first


def test_names_with_html_are_shown_as_text(site: Site) -> None:
    name = "<script>alert('x')<script><img src=x onerror=alert(1)>.wav"
    job = site.done(name, WORDS)
    site.failed("<b>bold<b>.wav", "<script>alert(2)</script> is not audio")  # a reason with HTML too
    client = site.client()
    for page in (client.get("/").text, client.get(f"/jobs/{job.id}").text, client.get("/live").text):
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(" in client.get(f"/jobs/{job.id}").text


def test_transcript_page_has_cues_player_and_every_format(site: Site) -> None:
    job = site.done("meeting.wav", WORDS, formats=("srt", "vtt", "txt", "json", "tsv"))
    page = site.client().get(f"/jobs/{job.id}").text
    assert f'src="/jobs/{job.id}/recording"' in page
    cues = re.findall(r'<li data-start="([\d.]+)" data-end="([\d.]+)">.*?</span> (.*?)</li>', page)
    assert cues and cues[0][0] == "0.000" and "Good morning everyone." in " ".join(c[2] for c in cues)
    client = site.client()
    for fmt in ("srt", "vtt", "txt", "json", "tsv"):
        assert f'href="/jobs/{job.id}/files/{fmt}"' in page
        response = client.get(f"/jobs/{job.id}/files/{fmt}")
        assert response.status_code == 200
        assert response.text == (site.cfg.outbox / f"meeting.{fmt}").read_text()
        assert "attachment" in response.headers["content-disposition"]


def test_speakers_of_the_json_transcript_are_shown(site: Site) -> None:
    """Issue 23's place: a JSON transcript that names speakers shows them; one that does not, a dash."""
    job = site.done("talk.wav", WORDS, formats=("json",))
    json_file = site.cfg.outbox / "talk.json"
    assert '<td class="speakers">-</td>' in site.client().get("/").text
    json_file.write_text(json_file.read_text().replace('"segments": [', '"speakers": ["Ann", "Bo"], "segments": ['))
    assert '<td class="speakers">Ann, Bo</td>' in site.client().get("/").text
    assert "Speakers: Ann, Bo" in site.client().get(f"/jobs/{job.id}").text


def test_workers_and_the_active_watcher(site: Site) -> None:
    from daemon.queue.db import WorkerState
    from daemon.queue.registry import Registry

    job = site.queued("now.wav")
    site.queue.claim("slot-1")
    registry = Registry(site.queue.engine, "slot-1")
    registry.register("tiny.en", "fp32")
    registry.heartbeat(WorkerState.PAUSED, "memory pressure", 321.4, job.id)
    client = site.client()
    page = client.get("/").text
    worker = re.search(r'<tr class="worker paused">.*?</tr>', page, re.S).group(0)
    assert "slot-1" in worker and "321 MB" in worker and "memory pressure" in worker and "now.wav" in worker
    assert "none active" in page
    lock = try_lock(site.queue.engine, WATCHER_LOCK)
    assert lock is not None
    try:
        assert "Watcher: <span class=\"state busy\">active</span>" in client.get("/").text
        assert try_lock(site.queue.engine, WATCHER_LOCK) is None  # looking did not take it
    finally:
        lock.release()
    assert try_lock(site.queue.engine, WATCHER_LOCK) is not None  # nor keep it


def test_a_queue_not_made_yet_is_explained(tmp_path: Path) -> None:
    import dataclasses

    site = make_site(tmp_path)
    site.cfg = dataclasses.replace(site.cfg, db=str(tmp_path / "elsewhere" / "jobs.db"))
    page = site.client().get("/")
    assert page.status_code == 503 and "no queue database" in page.text


# ------------------------------------------------------------------ what it serves, and nothing else

def test_recording_is_served_with_range_requests(site: Site) -> None:
    data = bytes(range(256)) * 400
    job = site.done("meeting.wav", WORDS, data=data)
    client = site.client()
    whole = client.get(f"/jobs/{job.id}/recording")
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    part = client.get(f"/jobs/{job.id}/recording", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = client.get(f"/jobs/{job.id}/recording", headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    open_ended = client.get(f"/jobs/{job.id}/recording", headers={"Range": f"bytes={len(data) - 10}-"})
    assert open_ended.status_code == 206 and open_ended.content == data[-10:]
    beyond = client.get(f"/jobs/{job.id}/recording", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416


@pytest.mark.parametrize("path", [
    "/jobs/1/files/..%2F..%2Fjobs.db", "/jobs/1/files/%2e%2e", "/jobs/1/files/srt%00", "/jobs/1/files//etc/passwd",
    "/jobs/1/recording/../../jobs.db", "/jobs/1/files/srt/..%2f..%2f..%2fetc%2fpasswd", "/static/..%2F..%2Fconfig.py",
    "/static/%2e%2e/app.py", "/etc/passwd", "//etc/passwd", "/jobs/%2e%2e/recording", "/jobs/-1/recording",
    "/jobs/99/recording", "/jobs/99/files/srt", "/jobs/99", "/jobs/99999999999999999999999/recording",
    "/jobs/1/files/txt",  # a format this job was not written in
    "/jobs/1/files/db",
])
def test_only_files_a_job_names_are_served(site: Site, path: str) -> None:
    site.done("meeting.wav", WORDS, formats=("srt",))
    response = site.client().get(path)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])


def test_a_recording_or_transcript_replaced_by_a_link_is_refused(site: Site, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    job = site.done("meeting.wav", WORDS, formats=("srt",))
    client = site.client()
    assert client.get(f"/jobs/{job.id}/recording").status_code == 200
    for path in (site.cfg.inbox / "meeting.wav", site.cfg.outbox / "meeting.srt"):
        path.unlink()
        path.symlink_to(secret)
    assert client.get(f"/jobs/{job.id}/recording").status_code == 404
    assert client.get(f"/jobs/{job.id}/files/srt").status_code == 404
    assert "cannot be played here" in client.get(f"/jobs/{job.id}").text


def test_a_recording_under_a_linked_folder_is_refused(site: Site, tmp_path: Path) -> None:
    job = site.done("team/meeting.wav", WORDS, formats=("srt",))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "meeting.wav").write_bytes(b"someone else's")
    (site.cfg.inbox / "team" / "meeting.wav").unlink()
    (site.cfg.inbox / "team").rmdir()
    (site.cfg.inbox / "team").symlink_to(elsewhere)
    assert site.client().get(f"/jobs/{job.id}/recording").status_code == 404


# ------------------------------------------------------------------ who may see it

def test_beyond_loopback_without_a_token_it_serves_only_the_reason(site: Site) -> None:
    job = site.done("meeting.wav", WORDS)
    client = site.client("http://192.0.2.10:8470", host="0.0.0.0")
    for path in ("/", "/live", f"/jobs/{job.id}", f"/jobs/{job.id}/recording", f"/jobs/{job.id}/files/srt"):
        response = client.get(path)
        assert response.status_code == 403 and "A token is required" in response.text
        assert "meeting" not in response.text


def test_with_a_token_a_browser_signs_in_once(site: Site) -> None:
    token = "correct horse battery staple"
    job = site.done("meeting.wav", WORDS)
    client = site.client("http://192.0.2.10:8470", host="0.0.0.0", web_token=token)
    for path in ("/", f"/jobs/{job.id}/recording", f"/jobs/{job.id}/files/srt"):
        refused = client.get(path)
        assert refused.status_code == 401 and "meeting" not in refused.text and "Sign in" in refused.text
    assert client.post("/login", content="token=wrong-token-here",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 403
    assert client.get("/").status_code == 401
    signed = client.post("/login", content="token=correct+horse+battery+staple",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert signed.status_code == 303 and token not in signed.headers["set-cookie"]
    assert "HttpOnly" in signed.headers["set-cookie"] and "samesite=strict" in signed.headers["set-cookie"].lower()
    assert client.get("/").status_code == 200 and client.get(f"/jobs/{job.id}/recording").status_code == 200


def test_a_link_with_the_token_signs_in_and_drops_it_from_the_address(site: Site) -> None:
    token = "correct horse battery staple"
    client = site.client("http://192.0.2.10:8470", host="0.0.0.0", web_token=token)
    response = client.get("/?state=done&token=correct%20horse%20battery%20staple")
    assert response.status_code == 303 and response.headers["location"] == "/?state=done"
    assert client.get("/?state=done").status_code == 200


def test_scripts_send_the_token_as_a_bearer(site: Site) -> None:
    client = site.client("http://192.0.2.10:8470", host="0.0.0.0", web_token="correct horse battery staple")
    assert client.get("/live", headers={"Authorization": "Bearer correct horse battery staple"}).status_code == 200
    assert client.get("/live", headers={"Authorization": "Bearer correct horse battery"}).status_code == 401


def test_on_loopback_it_answers_only_to_this_machines_names(site: Site) -> None:
    """DNS rebinding: a site whose name points at 127.0.0.1 must not read the page."""
    assert site.client("http://evil.example:8470").get("/").status_code == 421
    for base in (LOCAL, "http://localhost:8470", "http://[::1]:8470"):
        assert site.client(base).get("/").status_code == 200


def test_every_answer_carries_the_security_headers(site: Site) -> None:
    headers = site.client().get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ actions

def test_actions_are_off_unless_enabled(site: Site) -> None:
    job = site.failed("broken.m4a", "not audio")
    client = site.client()
    assert 'name="csrf"' not in client.get("/").text
    csrf = csrf_of(site.client(web_actions=True).get("/").text)  # even with a token of another process
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf}).status_code == 403
    assert site.queue.get([job.id])[0].status == JobStatus.FAILED


def test_retry_needs_the_pages_csrf_token(site: Site) -> None:
    job = site.failed("broken.m4a", "not audio")
    client = site.client(web_actions=True)
    csrf = csrf_of(client.get("/").text)
    assert client.post(f"/jobs/{job.id}/retry").status_code == 403
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": "guessed"}).status_code == 403
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf},
                       headers={"origin": "http://evil.example"}).status_code == 403
    assert client.get(f"/jobs/{job.id}/retry").status_code == 405  # never by GET
    assert site.queue.get([job.id])[0].status == JobStatus.FAILED
    done = client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf}, headers={"origin": LOCAL})
    assert done.status_code == 303 and done.headers["location"] == "/"
    again = site.queue.get([job.id])[0]
    assert again.status == JobStatus.QUEUED and again.error is None and again.attempts == 0


def test_transcribe_a_done_job_again(site: Site) -> None:
    """The same queue code as `whisper-daemon retry ID`: the job is queued again, its words forgotten,
    and the next worker claims it."""
    job = site.done("meeting.wav", WORDS)
    client = site.client(web_actions=True)
    page = client.get("/").text
    assert "Transcribe again" in page
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf_of(page), "back": "/\\evil.example"}).headers[
        "location"] == "/"  # never sent on to another site
    site.queue.claim("next-worker")
    site.queue.finish(job.id, "next-worker", JobStatus.DONE)
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf_of(page), "back": "/?state=done"}).headers[
        "location"] == "/?state=done"
    assert site.queue.segments(job.id) == []
    assert site.queue.claim("next-worker").id == job.id
    assert client.post(f"/jobs/{job.id}/retry", data={"csrf": csrf_of(page)}).status_code == 409  # running now
    assert client.post("/jobs/999/retry", data={"csrf": csrf_of(page)}).status_code == 409


# ------------------------------------------------------------------ reading without locking

def test_serving_never_holds_the_write_lock(site: Site) -> None:
    """While a writer holds SQLite's write lock the page still reads; while the page reads, a writer
    takes the lock at once (busy_timeout 0 would fail at the first conflict)."""
    job = site.done("meeting.wav", WORDS)
    client = site.client()
    writer = sqlite3.connect(site.cfg.db, timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert client.get("/").status_code == 200 and client.get(f"/jobs/{job.id}").status_code == 200
    finally:
        writer.execute("ROLLBACK")
    for path in ("/", "/live", f"/jobs/{job.id}"):
        client.get(path)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("ROLLBACK")
    writer.close()


def test_the_page_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    site = make_site(tmp_path, db=pg_url)
    done = site.done("meeting.wav", WORDS)
    failed = site.failed("broken.m4a", "not audio")
    client = site.client(web_actions=True)
    page = client.get("/").text
    assert "meeting.wav" in page and "broken.m4a" in page and "none active" in page
    assert "Good morning" in client.get(f"/jobs/{done.id}").text
    lock = try_lock(site.queue.engine, WATCHER_LOCK)
    assert lock is not None
    try:
        assert '<span class="state busy">active</span>' in client.get("/").text
    finally:
        lock.release()
    assert client.post(f"/jobs/{failed.id}/retry", data={"csrf": csrf_of(page)}).status_code == 303
    assert site.queue.get([failed.id])[0].status == JobStatus.QUEUED


# ------------------------------------------------------------------ the command

def test_web_command_prints_its_address_and_serves(daemon_env: dict[str, str], tmp_path: Path) -> None:
    import httpx2  # what Starlette's TestClient uses (the test extra installs it)

    make_site(tmp_path).done("meeting.wav", WORDS)  # the queue daemon_env names is another; this one has a job
    env = {**daemon_env, "WHISPER_DAEMON_DB": str(tmp_path / "jobs.db"), "WHISPER_DAEMON_INBOX": str(tmp_path / "inbox")}
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "web", "--port", "0"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        found = re.match(r"status page: (http://127\.0\.0\.1:(\d+))$", line.strip())
        assert found, line
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx2.get(found.group(1) + "/", timeout=5)
                break
            except httpx2.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert page.status_code == 200 and "meeting.wav" in page.text
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_web_settings_from_toml_env_and_flags(tmp_path: Path) -> None:
    from daemon import config

    toml = tmp_path / "config.toml"
    toml.write_text('host = "0.0.0.0"\nport = 9000\nweb_actions = true\nweb_token = "a token long enough"\n')
    cfg = config.load({"config": str(toml)}, env={})
    assert (cfg.host, cfg.port, cfg.web_actions, cfg.web_token) == ("0.0.0.0", 9000, True, "a token long enough")
    cfg = config.load({"config": str(toml), "port": 9001}, env={"WHISPER_DAEMON_HOST": "127.0.0.1"})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9001)
    defaults = config.load({"config": ""}, env={})
    assert (defaults.host, defaults.port, defaults.web, defaults.web_actions, defaults.web_token) == (
        "127.0.0.1", config.WEB_PORT, False, False, None)
    with pytest.raises(config.ConfigError, match="at least 12"):
        config.load({"config": ""}, env={"WHISPER_DAEMON_WEB_TOKEN": "short"})
    with pytest.raises(config.ConfigError, match="TCP port"):
        config.load({"config": "", "port": 70000}, env={})


def test_run_and_service_install_take_the_web_switch(tmp_path: Path) -> None:
    import threading

    from daemon import config
    from daemon.cli import _parser
    from daemon.processes import service
    from daemon.processes.supervisor import Supervisor

    args = _parser().parse_args(["run", "--web", "--port", "0"])
    cfg = config.load({k: v for k, v in vars(args).items()}, env={})
    assert cfg.web and [c.command for c in Supervisor(cfg, threading.Event()).children] == ["watch", "work", "web"]
    assert [c.command for c in Supervisor(config.Config(), threading.Event()).children] == ["watch", "work"]

    home = tmp_path / "home"
    unit = home / ".config" / "systemd" / "user" / "whisper-daemon-web.service"
    with_web = service.plan("install", cfg, "linux", home, python="/venv/bin/python")
    assert unit in with_web.files and "python -m daemon web" in with_web.files[unit].replace('"', "")
    assert ["systemctl", "--user", "enable", "--now", "whisper-daemon-watcher.service",
            "whisper-daemon-worker.service", "whisper-daemon-web.service"] in with_web.commands
    agents = service.plan("install", cfg, "darwin", home, uid=501, python="/venv/bin/python")
    assert home / "Library" / "LaunchAgents" / "io.github.whisper-daemon.web.plist" in agents.files
    # Installed once with the page: the other actions include it; an install without it takes it down.
    unit.parent.mkdir(parents=True)
    unit.write_text(with_web.files[unit])
    assert "whisper-daemon-web.service" in service.plan("stop", config.Config(), "linux", home).commands[0]
    without = service.plan("install", config.Config(), "linux", home, python="/venv/bin/python")
    assert unit not in without.files
    assert ["systemctl", "--user", "disable", "--now", "whisper-daemon-web.service"] in without.commands
    assert any(isinstance(s, service.Remove) and s.path == unit for s in without.steps)
