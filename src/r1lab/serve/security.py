"""The server's outer guard, an ASGI middleware in front of everything else:

- request bodies larger than max_body_bytes get a 413 before they are read (Content-Length), or as soon as
  the running total passes the limit (chunked bodies); this happens before the API key is looked at, so
  nobody can make the server buffer a large body;
- without an API key, the Host header must be a loopback name (localhost, *.localhost) or an IP address:
  a web page that rebinds its own DNS name to 127.0.0.1 (DNS rebinding) is refused;
- with an API key, /docs, /redoc, /openapi.json and /metrics need it too (they describe or measure the server);
- every response carries security headers: a Content-Security-Policy that allows only this server's own
  scripts, styles, fonts and connections (the chat page has no inline code), nosniff,
  and frame-ancestors 'none' / X-Frame-Options DENY.
"""
from __future__ import annotations

import hmac
import ipaddress

from .errors import APIError, error_response

PROTECTED = ("/docs", "/redoc", "/openapi.json", "/metrics")
NO_CSP = ("/docs", "/redoc")  # FastAPI's API browser loads its script from a CDN; behind the key when one is set
DEFAULT_MAX_BODY = 2 * 2**20


# the chat page has no inline code (its scripts, styles and fonts are static files): nothing but 'self'
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def host_allowed(host: str) -> bool:
    """Loopback names and IP literals (no page can be served from an IP it does not own) pass."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class SecurityMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int = DEFAULT_MAX_BODY, csp: str = CSP):
        self.app, self.api_key, self.max_body, self.csp = app, api_key, max_body_bytes, csp

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        send = self._with_headers(send, path)
        length = headers.get("content-length", "")
        if length.strip().isdigit() and int(length) > self.max_body:
            return await self._refuse(send, self._too_large())
        if self.api_key is None and not host_allowed(headers.get("host", "")):
            return await self._refuse(send, APIError(
                403, f"Host {headers.get('host', '')!r} is not allowed: without --api-key this server answers only "
                "to localhost or an IP address (DNS rebinding protection); start it with --api-key to serve a name",
                code="host_not_allowed"))
        if self.api_key is not None and path.startswith(PROTECTED) and not self._key_ok(headers):
            return await self._refuse(send, APIError(401, "Incorrect API key provided. Send it as 'Authorization: "
                                                     "Bearer <key>'.", code="invalid_api_key"))
        if "content-length" not in headers and scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_capped(receive)
            if body is None:
                return await self._refuse(send, self._too_large())
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than this server's limit of {self.max_body} bytes.",
                        code="request_too_large")

    def _key_ok(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _read_capped(self, receive) -> bytes | None:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            total += len(message.get("body", b""))
            if total > self.max_body:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    def _with_headers(self, send, path: str):
        extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                 (b"referrer-policy", b"no-referrer")]
        if self.csp and not path.startswith(NO_CSP):
            extra.append((b"content-security-policy", self.csp.encode()))

        async def wrapped(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message, headers=[*message.get("headers", []), *(h for h in extra if h[0] not in have)])
            await send(message)

        return wrapped

    async def _refuse(self, send, err: APIError) -> None:
        response = error_response(err)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [*response.raw_headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": response.body})


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
