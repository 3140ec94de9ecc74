"""The JetStream engine's error boundary (store/jetstream/errors.py) and its set-up
retries (setup.settling), without a server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from pinrelay.core.errors import ErrorCode
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.api import Api
from pinrelay.store.jetstream.errors import ApiError, Unavailable, nats_errors, setup_may_retry
from pinrelay.store.jetstream.setup import delete_streams, settling


def answer(code: int, err_code: int, description: str = "nope") -> dict[str, Any]:
    return {"error": {"code": code, "err_code": err_code, "description": description}}


class TestApiError:
    def test_an_answer_without_error_passes(self) -> None:
        assert ApiError.check({"seq": 3}) == {"seq": 3}

    def test_an_error_answer_raises_with_named_fields(self) -> None:
        with pytest.raises(ApiError) as caught:
            ApiError.check(answer(404, 10037, "no message found"))
        err = caught.value
        assert (err.code, err.err_code, err.description) == (404, 10037, "no message found")
        assert err.not_found and not err.transient and not err.server_side

    @pytest.mark.parametrize(
        ("code", "err_code", "name"),
        [
            (400, 10071, "wrong_last_sequence"),
            (400, 10164, "transient"),  # a write to the subject still in flight
            (400, 10201, "batch_duplicate"),
            (503, 0, "transient"),
            (504, 0, "transient"),
            (500, 0, "server_side"),
        ],
    )
    def test_named_properties(self, code: int, err_code: int, name: str) -> None:
        assert getattr(ApiError(code, err_code, ""), name) is True


class TestBoundary:
    @pytest.mark.parametrize(
        "exc",
        [
            nats.errors.TimeoutError(),
            nats.errors.NoRespondersError(),
            nats.errors.ConnectionReconnectingError(),
            nats.js.errors.ServiceUnavailableError(),
            TimeoutError(),
            ApiError(503, 0, "no leader"),
            nats.js.errors.APIError(code=504, description="timeout"),
        ],
    )
    def test_transient_failures_are_unavailable(self, exc: BaseException) -> None:
        with pytest.raises(Unavailable) as caught, nats_errors("read"):
            raise exc
        assert caught.value.code is ErrorCode.OVERLOADED
        assert caught.value.__cause__ is exc

    @pytest.mark.parametrize(
        "exc",
        [
            ApiError(400, 10999, "bad"),
            ApiError(500, 0, "bad"),
            nats.js.errors.BadRequestError(code=400, description="bad"),
        ],
    )
    def test_refusals_are_store_closed_with_the_description(self, exc: BaseException) -> None:
        with pytest.raises(StoreClosed) as caught, nats_errors("purge"):
            raise exc
        assert type(caught.value) is StoreClosed
        assert str(caught.value) == "purge: bad"

    def test_other_client_errors_are_store_closed(self) -> None:
        with pytest.raises(StoreClosed) as caught, nats_errors("publish"):
            raise nats.errors.BadSubjectError()
        assert type(caught.value) is StoreClosed

    @pytest.mark.parametrize("exc", [StoreClosed("ours"), ValueError("a bug")])
    def test_anything_else_passes_through(self, exc: Exception) -> None:
        with pytest.raises(type(exc)) as caught, nats_errors("read"):
            raise exc
        assert caught.value is exc

    def test_setup_retries_what_a_new_cluster_may_say(self) -> None:
        assert setup_may_retry(nats.js.errors.ServiceUnavailableError())  # no code set
        assert setup_may_retry(nats.js.errors.APIError(code=500, err_code=10005))
        assert setup_may_retry(ApiError(503, 0, ""))
        assert setup_may_retry(nats.errors.TimeoutError())
        assert not setup_may_retry(nats.js.errors.BadRequestError(code=400, err_code=10058))
        assert not setup_may_retry(ValueError())


class _Open:
    is_closed = False


class TestCall:
    async def test_transient_failures_are_retried_then_plain_store_closed(self) -> None:
        api = Api(request_timeout=1.0, retry_for=0.2)
        api.attach(_Open())  # type: ignore[arg-type]
        attempts = 0

        async def op() -> int:
            nonlocal attempts
            attempts += 1
            raise nats.errors.NoRespondersError

        with pytest.raises(StoreClosed) as caught:
            await api.call(op, "read")
        assert attempts > 1
        assert type(caught.value) is StoreClosed
        assert isinstance(caught.value.__cause__, nats.errors.NoRespondersError)

    async def test_a_retry_that_succeeds_answers(self) -> None:
        api = Api(request_timeout=1.0, retry_for=2.0)
        api.attach(_Open())  # type: ignore[arg-type]
        attempts = 0

        async def op() -> int:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise ApiError(503, 0, "no leader")
            return 7

        assert await api.call(op, "read") == 7

    async def test_a_closed_store_is_store_closed_before_any_attempt(self) -> None:
        api = Api(request_timeout=1.0, retry_for=2.0)

        async def op() -> int:
            raise AssertionError("attempted")

        with pytest.raises(StoreClosed, match="closed"):
            await api.call(op, "read")


class TestSettling:
    """``settling``: set-up steps retried while a cluster settles (setup.py)."""

    async def test_an_attempt_sent_in_time_that_times_out_late_is_tried_once_more(self) -> None:
        deadline = time.monotonic() + 0.05
        attempts = 0

        async def op() -> int:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                await asyncio.sleep(0.1)  # a request whose timeout ends past the deadline
                raise nats.errors.TimeoutError
            return 7

        assert await settling(op, deadline, "test") == 7
        assert attempts == 2

    async def test_an_attempt_begun_after_the_deadline_is_the_last(self) -> None:
        attempts = 0

        async def op() -> int:
            nonlocal attempts
            attempts += 1
            raise nats.errors.TimeoutError

        with pytest.raises(nats.errors.TimeoutError):
            await settling(op, time.monotonic() - 1, "test")
        assert attempts == 1

    async def test_a_refusal_is_not_tried_again(self) -> None:
        attempts = 0

        async def op() -> int:
            nonlocal attempts
            attempts += 1
            raise nats.js.errors.BadRequestError(code=400, err_code=10058)

        with pytest.raises(nats.js.errors.BadRequestError):
            await settling(op, time.monotonic() + 60, "test")
        assert attempts == 1


class _Streams:
    """Deletes answered as a busy cluster may: the first times out, done or not."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.calls: list[str] = []

    async def delete_stream(self, name: str) -> bool:
        self.calls.append(name)
        if name not in self.names:
            raise nats.js.errors.NotFoundError
        self.names.discard(name)  # done, and its answer lost the first time
        if self.calls.count(name) == 1:
            raise nats.errors.TimeoutError
        return True


async def test_a_delete_whose_answer_timed_out_is_tried_again_and_found_done() -> None:
    streams = _Streams({"A", "B"})
    await delete_streams(streams, ["A", "B", "C"])  # type: ignore[arg-type]
    assert streams.names == set()
    assert sorted(streams.calls) == ["A", "A", "B", "B", "C"]  # C: missing, not retried
