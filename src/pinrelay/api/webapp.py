"""The web messenger at ``/app`` (issue 13; OPERATIONS "Web messenger").

The page is rendered here from ``web/app.html`` (the relay's name, version and link
URLs filled in); its script ``web/app.js`` (an ES module, with ``link.js``,
``contacts.js``, ``groups.js``, ``notices.js`` and ``dom.js``) speaks the link
protocol from the browser (PROTOCOL.md) and the contacts and groups routes over
HTTP with the device's token, and keeps the conversations, the cursor and the token
in the browser's localStorage.  No third-party code, no build step: its files (page,
scripts, stylesheet, icon) ship in the package.

Every answer carries a strict Content-Security-Policy: scripts and styles only from
this origin (no inline script or style), connections only to this origin and the
relay's link URLs, no framing.  Static files are revalidated by ETag.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import string
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay import __version__
from pinrelay.api.common import relay_of


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    #: A strong validator: a hash of the body.
    etag: str


#: The page's ES modules: app.js imports the others.
SCRIPTS = ("app.js", "link.js", "contacts.js", "groups.js", "notices.js", "dom.js")


@functools.cache
def asset(name: str) -> Asset:
    """A file of ``pinrelay/web``, read once."""
    media = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
        ".svg": "image/svg+xml",
    }
    body = resources.files("pinrelay").joinpath("web", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, media[name[name.rindex(".") :]], etag)


def origins(link_urls: list[str]) -> list[str]:
    """The origins of the link URLs, for ``connect-src`` (``ws://host:port``)."""
    found: dict[str, None] = {}
    for url in link_urls:
        parts = urlsplit(url)
        if parts.scheme in ("ws", "wss") and parts.netloc:
            found[f"{parts.scheme}://{parts.netloc}"] = None
    return list(found)


def security_headers(link_urls: list[str]) -> dict[str, str]:
    connect = " ".join(["'self'", *origins(link_urls)])
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        f" connect-src {connect}; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


async def page(request: Request) -> Response:
    relay = relay_of(request)
    urls = relay.link_urls
    template = string.Template(asset("app.html").body.decode())
    text = template.substitute(
        version=html.escape(__version__),
        node=html.escape(relay.config.node),
        region=html.escape(relay.config.region),
        link_urls=html.escape(json.dumps(urls), quote=True),
        css=asset("app.css").etag.strip('"'),
        js=scripts_version(),
    )
    headers = security_headers(urls) | {"Cache-Control": "no-cache"}
    return Response(text, media_type="text/html; charset=utf-8", headers=headers)


@functools.cache
def scripts_version() -> str:
    """One validator for all the modules: the page's ``?v=`` changes with any."""
    joined = "".join(asset(name).etag for name in SCRIPTS).encode()
    return hashlib.sha256(joined).hexdigest()[:20]


def _static(name: str) -> Route:
    async def serve(request: Request) -> Response:
        found = asset(name)
        headers = security_headers(relay_of(request).link_urls) | {
            "ETag": found.etag,
            "Cache-Control": "no-cache",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    return Route(f"/app/{name}", serve, methods=["GET"])


async def _to_page(_request: Request) -> Response:
    """``/app/``, as a person may type it: the page is ``/app`` (its scripts are
    beside it, under ``/app/``)."""
    return Response(status_code=308, headers={"Location": "/app"})


routes = [
    Route("/app", page, methods=["GET"]),
    Route("/app/", _to_page, methods=["GET"]),
    *(_static(name) for name in SCRIPTS),
    _static("app.css"),
    _static("icon.svg"),  # /app and /status name it: else a browser asks for /favicon.ico
]
