"""The status page's routes (Starlette): the queue, a transcript, a job's recording and files,
and the actions when enabled. Every page is read through pages.py; every file through files.py."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from loguru import logger
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.config import FORMATS, Config
from daemon.queue.db import JobStatus
from daemon.queue.summary import clock, eta_seconds, language
from daemon.web import files, pages
from daemon.web.guard import COOKIE, Guard

HERE = Path(__file__).parent
POLL_SECONDS = 2  # how often an open queue page asks for fresh rows
# The page runs only its own scripts and styles, loads nothing from elsewhere, and cannot be framed.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
MEDIA_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain", "json": "application/json",
               "tsv": "text/tab-separated-values"}


def create_app(cfg: Config) -> Starlette:
    guard = Guard(cfg.host, cfg.web_token)
    source = pages.Source(cfg)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    env.globals.update(clock=clock, eta_seconds=eta_seconds, language=language, name=lambda job: Path(job.path).name,
                       folder=lambda job: str(Path(job.path).parent).removeprefix("."), speakers=pages.speakers,
                       states=list(JobStatus), finished=pages.FINISHED, retryable=pages.RETRYABLE,
                       actions=cfg.web_actions, csrf=guard.csrf, poll_seconds=POLL_SECONDS, page_size=pages.PAGE_SIZE)
    templates = Jinja2Templates(env=env)

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, template, context, status_code=status_code)

    def reading(request: Request, template: str, build: Any) -> Response:
        """`template` with what `build()` reads; the reason instead while the queue cannot be read."""
        try:
            return render(request, template, **build())
        except pages.NotReady as e:
            return render(request, "unavailable.html", 503, reason=str(e))
        except HTTPException:
            raise
        except Exception:
            source.failed()  # e.g. a PostgreSQL restart: the next request connects afresh
            raise

    def filters(request: Request) -> dict[str, Any]:
        state = request.query_params.get("state", "")
        status = next((s for s in JobStatus if s.value == state), None)
        page = request.query_params.get("page", "0")
        return {"status": status, "search": request.query_params.get("q", "").strip(),
                "page": int(page) if page.isdigit() and len(page) < 9 else 0}

    def overview(template: str) -> Any:
        """The queue page, or its live part alone (what the page's script fetches every POLL_SECONDS)."""
        def endpoint(request: Request) -> Response:
            chosen = filters(request)
            return reading(request, template, lambda: {
                **chosen, "view": pages.overview(source, chosen["status"], chosen["search"], chosen["page"])})
        return endpoint

    def the_job(request: Request) -> Any:
        found = pages.job(source, request.path_params["job_id"])
        if found is None:
            raise HTTPException(404, f"there is no job {request.path_params['job_id']}")
        return found

    def transcript_page(request: Request) -> Response:
        def build() -> dict[str, Any]:
            shown = the_job(request)
            outputs = source.reader().outputs(shown.id)
            return {"job": shown, "segments": pages.transcript(source, shown), "outputs": outputs,
                    "formats": [p.suffix[1:] for p in outputs if p.suffix[1:] in FORMATS],
                    "playable": files.recording(source.reader(), shown) is not None}
        return reading(request, "transcript.html", build)

    def recording(request: Request) -> Response:
        shown = the_job(request)
        path = files.recording(source.reader(), shown)
        if path is None:
            raise HTTPException(404, "the recording is no longer where the job found it")
        return FileResponse(path)  # answers Range requests: an hour of audio starts playing at once

    def download(request: Request) -> Response:
        shown, fmt = the_job(request), request.path_params["fmt"]
        path = files.transcript_file(source.reader(), shown, fmt)
        if path is None:
            raise HTTPException(404, f"job {shown.id} has no {fmt} file")
        return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=path.name)

    async def retry(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if not cfg.web_actions:
            raise HTTPException(403, "actions are off: set web_actions = true to retry from the page")
        if not guard.csrf_ok(request, (form.get("csrf") or [""])[0]):
            raise HTTPException(403, "this form is out of date (the page was served before a restart): reload it")
        job_id = request.path_params["job_id"]
        if job_id > pages.MAX_ID or not await run_in_threadpool(lambda: source.writer().retry([job_id])):
            raise HTTPException(409, f"job {job_id} cannot be retried now (no such job, or queued or running)")
        logger.info("job {}: queued again from the status page", job_id)
        back = (form.get("back") or ["/"])[0]  # the page the button was on: this site's, never another's
        return RedirectResponse(back if back.startswith("/") and back[1:2] not in ("/", "\\") else "/", 303)

    def login_page(request: Request) -> Response:
        return render(request, "login.html", 401 if request.method == "GET" else 403, wrong=request.method == "POST")

    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if not guard.token_matches((form.get("token") or [""])[0]):
            return login_page(request)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, guard.session or "", httponly=True, samesite="strict")
        return response

    routes = [
        Route("/", overview("queue.html")),
        Route("/live", overview("live.html")),
        Route("/jobs/{job_id:int}", transcript_page),
        Route("/jobs/{job_id:int}/recording", recording),
        Route("/jobs/{job_id:int}/files/{fmt:str}", download),
        Route("/jobs/{job_id:int}/retry", retry, methods=["POST"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: lambda request, e: render(
        request, "error.html", e.status_code, reason=e.detail)})
    app.add_middleware(Guarded, guard=guard, render=render)
    return app


class Guarded:
    """Every request passes guard.py's checks before a route sees it; every answer gets the security headers."""

    def __init__(self, app: ASGIApp, guard: Guard, render: Any) -> None:
        self.app, self.guard, self.render = app, guard, render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message["headers"]}
                message["headers"] = [*message["headers"], *((k.encode(), v.encode()) for k, v in
                                                             SECURITY_HEADERS.items() if k.encode() not in present)]
            await send(message)

        request = Request(scope)
        response = self.check(request)
        if response is None:
            return await self.app(scope, receive, send_with_headers)
        await response(scope, receive, send_with_headers)

    def check(self, request: Request) -> Response | None:
        """None to let the request through; else the answer that stops it."""
        path = request.url.path
        if not self.guard.host_allowed(request):
            return Response("this page answers only to localhost, 127.0.0.1 or [::1]", 421)
        if path.startswith("/static/"):
            return None
        if self.guard.locked:
            return self.render(request, "locked.html", 403)
        if path == "/login" or self.guard.signed_in(request):
            return None
        given = request.query_params.get("token")
        if given is not None and self.guard.token_matches(given):  # a link with the token: sign in, drop it from the URL
            query = urllib.parse.urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(str(URL(path=path, query=query)), 303)
            response.set_cookie(COOKIE, self.guard.session or "", httponly=True, samesite="strict")
            return response
        return self.render(request, "login.html", 401, wrong=given is not None)
