"""The one place where nats-py's failures become pinrelay's (STYLE, "Errors").

As httpx maps httpcore's exceptions in one context manager, :func:`nats_errors`
turns whatever nats-py raises, and every error answer of the JetStream API
(:class:`ApiError`, with the server's ``code`` and ``err_code`` by name), into:

- :class:`Unavailable` for "the cluster cannot answer right now" (timeouts, no
  responders, a reconnect, a 503/504 answer): the caller retries it for a while
  (``Api.call``), then raises a plain :class:`StoreClosed`;
- :class:`StoreClosed` for anything else: nothing was stored; 503, retry later.

Code above this boundary tests named properties (``err.not_found``,
``err.wrong_last_sequence``), never positional tuples or numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors

from pinrelay.store.base import StoreClosed

#: JetStream API error codes met here (``err_code``).
NO_MESSAGE = 10037
#: A delete of a message not there (nats-server answers it with a 500).
DELETE_NO_MESSAGE = 10057
WRONG_LAST_SEQUENCE = 10071
#: "Wrong last sequence" without a sequence: the leader holds a proposal for the
#: subject it has not applied (committed or not: it cannot know yet), DECISIONS 62.
SUBJECT_IN_FLIGHT = 10164
BATCH_DUPLICATE_ID = 10201
STREAM_NAME_IN_USE = 10058
NO_PEERS = 10005

#: nats-py's errors that mean "the cluster cannot answer right now".
TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
    ConnectionError,
)


class ApiError(Exception):
    """An error answer of the JetStream API, or of a publish to a stream."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} description={description!r}")
        self.code = code
        self.err_code = err_code
        self.description = description

    @classmethod
    def check(cls, answer: dict[str, Any]) -> dict[str, Any]:
        """``answer``, or raise the error it carries."""
        err = answer.get("error")
        if err:
            raise cls(
                int(err.get("code", 0)),
                int(err.get("err_code", 0)),
                str(err.get("description", "")),
            )
        return answer

    @classmethod
    def of(cls, exc: nats.js.errors.APIError) -> ApiError:
        """The same error, raised by one of nats-py's JetStream helpers."""
        return cls(exc.code or 0, exc.err_code or 0, exc.description or "")

    @property
    def transient(self) -> bool:
        """The cluster cannot answer now (no leader, or it is busy, or a write to
        the subject is still in flight): try again."""
        return self.code in (503, 504) or self.err_code == SUBJECT_IN_FLIGHT

    @property
    def server_side(self) -> bool:
        """A 5xx: the server failed, not the request."""
        return self.code >= 500

    @property
    def not_found(self) -> bool:
        """No such message (a read past the end, a key never written, a delete of a
        message deleted before)."""
        return self.err_code in (NO_MESSAGE, DELETE_NO_MESSAGE) or self.code == 404

    @property
    def in_flight(self) -> bool:
        """A write to the subject is in flight (not applied yet): try again soon."""
        return self.err_code == SUBJECT_IN_FLIGHT

    @property
    def wrong_last_sequence(self) -> bool:
        """A compare-and-set lost: the subject moved past the expected sequence
        (a committed write; one in flight is :attr:`transient`)."""
        return self.err_code == WRONG_LAST_SEQUENCE

    @property
    def batch_duplicate(self) -> bool:
        """An atomic batch holds a message already stored (its Nats-Msg-Id was seen):
        an earlier attempt was committed and its answer lost, or a takeover's message.
        The whole batch is refused."""
        return self.err_code == BATCH_DUPLICATE_ID


class Unavailable(StoreClosed):
    """The cluster cannot answer right now (leader election, reconnect): retried by
    ``Api.call`` for ``retry_for`` seconds, then raised as a plain StoreClosed."""


def name_in_use(exc: nats.js.errors.APIError) -> bool:
    """A stream or bucket of that name exists (create it or adopt it)."""
    return ApiError.of(exc).err_code == STREAM_NAME_IN_USE


def setup_may_retry(exc: BaseException) -> bool:
    """Whether creating a stream or bucket failed only for now.

    A cluster that just started may not know its peers yet ("no suitable peers for
    placement"), or be electing a leader: try again.
    """
    if isinstance(exc, TRANSIENT):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        exc = ApiError.of(exc)
    return isinstance(exc, ApiError) and (exc.err_code == NO_PEERS or exc.server_side)


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Map nats-py's exceptions and API error answers raised inside to pinrelay's.

    ``what`` names the operation in the message ("read pr_devices: ...").  Anything
    that is not a NATS failure (a StoreClosed of our own, a bug) passes through.
    """
    try:
        yield
    except TRANSIENT as exc:
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except nats.js.errors.APIError as exc:
        raise _from_api(ApiError.of(exc), what) from exc
    except ApiError as exc:
        raise _from_api(exc, what) from exc
    except nats.errors.Error as exc:  # anything else from the client: not stored
        raise StoreClosed(f"{what}: {type(exc).__name__}: {exc}") from exc


def _from_api(err: ApiError, what: str) -> StoreClosed:
    if err.transient:
        return Unavailable(f"{what}: {type(err).__name__}: {err}")
    return StoreClosed(f"{what}: {err.description}")
