"""Who may talk to `cbir serve`.

* Bound to a loopback address (the default), requests need no token, but their Host header
  must name this machine: a web page elsewhere cannot reach the server through DNS rebinding.
* Bound to any other address, a token (``--token`` or ``CBIR_TOKEN``) is required to start, and
  every request must carry it: ``Authorization: Bearer TOKEN``, or the ``cbir_token`` cookie the
  server sets when the page is first opened as ``/?token=TOKEN`` (image tags send no headers).
* Either way, the API answers only its own page, since any page the user visits can post to
  127.0.0.1: a request a browser makes for a page of another origin (its ``Origin`` is not this
  server's address, or ``Sec-Fetch-Site`` is cross-site or same-site: a page on localhost:8000
  is "same-site" to localhost:8765 and is sent its cookie) gets 403, unless it presents the token
  itself (Authorization, or ``?token=``). Programs that send neither header (curl, scripts) pass,
  and so does following a link to the page (a top-level navigation outside /api/).
"""

from __future__ import annotations

import ipaddress
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cbir.errors import UsageError

COOKIE = "cbir_token"
OTHER_SITES = ("cross-site", "same-site")  # Sec-Fetch-Site values of a request made for another origin
DEFAULT_PORTS = {"http": "80", "https": "443"}
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
TOKEN_PAGE = """<!doctype html><meta charset="utf-8"><title>cbir: token needed</title>
<h1>cbir</h1><p>{reason}. Open the address <code>cbir serve</code> printed, which ends in
<code>/?token=...</code>, or add <code>?token=YOUR_TOKEN</code> to this address.</p>"""


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_binding(host: str, token: str | None) -> None:
    """Refuse, before anything starts, to expose a library without a token (or with a weak one)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"--token must be at least {MIN_TOKEN_LENGTH} characters; make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if token is None and not is_loopback(host):
        raise UsageError(
            f"--host {host} lets other machines reach your photos: give a token with --token or "
            "CBIR_TOKEN (python -c 'import secrets; print(secrets.token_urlsafe())'), or keep the "
            "default --host 127.0.0.1"
        )


class Guard:
    """ASGI middleware: the token check, or the Host check on a loopback-only server."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: tuple[str, ...], max_body: int):
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.max_body = max_body  # request bodies are cut off past this many bytes (413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # cbir has none: refused before any check could be missed
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":  # lifespan
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        too_large = f"request body over the limit of {self.max_body:,} bytes"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _refuse(scope, receive, send, 413, too_large)
        foreign = None if _navigation_to_page(scope, headers) else _foreign_origin(headers)
        if self.token is None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                return await _refuse(scope, receive, send, 400, f"unexpected Host header {host!r}")
            if foreign:
                return await _refuse(scope, receive, send, 403, _cross_origin_message(foreign))
            return await self._limited(scope, receive, send, too_large)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        query_token = next((v for k, v in query if k == "token"), None)
        if query_token is not None and self._valid(query_token) and scope["path"] == "/":
            # the page opened from the URL cbir printed: keep the token as a cookie, drop it from the URL
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            response = RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        offered = _bearer(headers.get("authorization", "")) or _cookie(headers.get("cookie", ""), COOKIE) or query_token
        if offered is None or not self._valid(offered):
            reason = "this server needs a token" if offered is None else "wrong token"
            if scope["path"] == "/" and "text/html" in headers.get("accept", ""):  # a person, in a browser
                return await HTMLResponse(TOKEN_PAGE.format(reason=reason), 401)(scope, receive, send)
            return await _refuse(
                scope, receive, send, 401, f"{reason}: send Authorization: Bearer TOKEN, or open /?token=TOKEN"
            )
        # The cookie rides along with any same-site request: only a token the caller holds counts.
        presented = _bearer(headers.get("authorization", "")) or query_token
        if foreign and not (presented is not None and self._valid(presented)):
            return await _refuse(scope, receive, send, 403, _cross_origin_message(foreign))
        return await self._limited(scope, receive, send, too_large)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, too_large: str) -> None:
        """Run the app, counting the body as it streams in (chunked uploads declare no length):
        past the limit the app sees the client go away, and its answer is replaced by a 413."""
        state = {"received": 0, "over": False, "started": False}

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if state["over"]:
                return  # the app's answer to a body cut short; the 413 goes out instead
            state["started"] |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _refuse(scope, receive, send, 413, too_large)

    def _valid(self, offered: str) -> bool:
        return secrets.compare_digest(offered.encode(), self.token.encode())


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    kind = {401: "Unauthorized", 403: "Forbidden", 413: "TooLarge"}.get(status, "BadRequest")
    response = JSONResponse({"error": message, "type": kind}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)


def _foreign_origin(headers: dict) -> str | None:
    """How a browser said this request comes from a page of another origin; None if it did not.
    Both headers are set by the browser, never by the page's scripts."""
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in OTHER_SITES:
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip())  # "null" from sandboxed frames and local files: no address
        own = _address(headers.get("host", ""), parts.scheme)
        if parts.scheme not in DEFAULT_PORTS or not own or _address(parts.netloc, parts.scheme) != own:
            return f"Origin: {origin.strip()[:100]}"
    return None


def _address(netloc: str, scheme: str) -> str:
    """host[:port] lower-cased, without the scheme's default port (as browsers write Host)."""
    netloc = netloc.strip().lower()
    default = DEFAULT_PORTS.get(scheme.lower())
    return netloc.removesuffix(f":{default}") if default else netloc


def _navigation_to_page(scope: Scope, headers: dict) -> bool:
    """Someone following a link to the page (or /docs): reads nothing for the linking page."""
    return (
        scope["method"] in ("GET", "HEAD")
        and headers.get("sec-fetch-mode") == "navigate"
        and not scope["path"].startswith("/api/")
    )


def _cross_origin_message(foreign: str) -> str:
    return (
        f"cross-origin request refused ({foreign}): the API answers only its own page, or a client "
        "that sends its token (cbir serve --token, Authorization: Bearer TOKEN)"
    )


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None
