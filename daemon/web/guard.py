"""Who may see the page and press its buttons.

Bound to loopback, the page answers only requests addressed to this machine by name (a Host of
localhost, 127.0.0.1 or ::1: a site whose name is re-pointed at 127.0.0.1, DNS rebinding, gets
nothing). Bound to any other address it requires web_token, and without one it serves nothing but
a page that says so. With a token, a browser signs in once (a form, or ?token= in a link) and
keeps a cookie derived from it; scripts send `Authorization: Bearer TOKEN`. Every action is a POST
carrying this process's CSRF token, which only a page it served can know.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from starlette.requests import Request

COOKIE = "whisper_daemon_web"
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header: `[::1]:8470` → `::1`, `localhost:8470` → `localhost`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class Guard:
    def __init__(self, host: str, token: str | None) -> None:
        self.token = token
        self.loopback = is_loopback(host)
        self.locked = not self.loopback and token is None  # served beyond this machine with no password
        # The cookie holds a value derived from the token, not the token itself.
        self.session = None if token is None else hmac.new(token.encode(), b"whisper-daemon web", hashlib.sha256).hexdigest()
        self.csrf = secrets.token_urlsafe(32)  # new with every start: a page from before a restart must be reloaded

    def host_allowed(self, request: Request) -> bool:
        return not self.loopback or is_loopback(_host_name(request.headers.get("host", "")))

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given.strip()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return self.session is not None and hmac.compare_digest(cookie.encode(), self.session.encode())

    def csrf_ok(self, request: Request, given: str) -> bool:
        """The form's token is this process's, and a browser that says where the POST comes from says this site."""
        origin = request.headers.get("origin")
        if origin is not None and origin.partition("://")[2] != request.headers.get("host"):
            return False
        return hmac.compare_digest(given.encode(), self.csrf.encode())
