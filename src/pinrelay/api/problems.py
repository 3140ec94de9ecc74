"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pinrelay.core.chat import Refused
from pinrelay.core.errors import ErrorCode, PinrelayError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://pinrelay.dev/problems/"

_STATUS_CODES = {e.status: e for e in ErrorCode if e is not ErrorCode.REPLACED}


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A problem+json body (RFC 9457 §3)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


def problem_parts(
    code: ErrorCode,
    detail: str,
    *,
    instance: str | None = None,
    retry_after: float | None = None,
    kind: tuple[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A problem's body and the headers that go with it; ``kind``: a ``type`` code
    and title other than ``code``'s (a chat refusal's, core/chat.py)."""
    body = msgspec.json.encode(
        Problem(
            type=code.problem_type if kind is None else f"{PROBLEM_BASE}{kind[0]}",
            title=code.title if kind is None else kind[1],
            status=code.status,
            detail=detail,
            instance=instance,
        )
    )
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    if code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="pinrelay"'
    return body, headers


def problem(
    code: ErrorCode, detail: str, *, instance: str | None = None, retry_after: float | None = None
) -> Response:
    body, headers = problem_parts(code, detail, instance=instance, retry_after=retry_after)
    return Response(body, status_code=code.status, media_type=PROBLEM_JSON, headers=headers)


def error_parts(exc: PinrelayError, path: str) -> tuple[bytes, dict[str, str]]:
    """The problem for an error raised by a handler, as body and headers."""
    retry: float | None = getattr(exc, "retry_after", None)
    if retry is None and exc.code in (ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED):
        retry = 1.0  # 429 and 503 always say when to come back (RFC 9110 §10.2.3)
    kind = exc.problem if isinstance(exc, Refused) else None
    return problem_parts(exc.code, exc.detail, instance=path, retry_after=retry, kind=kind)


async def on_pinrelay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PinrelayError)
    body, headers = error_parts(exc, request.url.path)
    return Response(body, status_code=exc.code.status, media_type=PROBLEM_JSON, headers=headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        body = msgspec.json.encode(
            Problem(
                type=f"{PROBLEM_BASE}method_not_allowed",
                title="Method not allowed",
                status=405,
                detail=f"{request.method} is not allowed on {request.url.path}",
            )
        )
        return Response(body, status_code=405, media_type=PROBLEM_JSON, headers=exc.headers)
    code = _STATUS_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
    return problem(code, str(exc.detail), instance=request.url.path)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(ErrorCode.INTERNAL, "internal error; see the relay's log")


async def on_client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up mid-body: nothing was stored and nobody reads the answer.
    return Response(status_code=400)
