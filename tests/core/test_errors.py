"""ErrorCode wire forms and the exception tree."""

from __future__ import annotations

import pytest

from pinrelay.core.errors import (
    ErrorCode,
    LimitExceeded,
    LocalProtocolError,
    Overloaded,
    PinrelayError,
    RemoteProtocolError,
)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_close_code_is_4000_plus_status(code: ErrorCode) -> None:
    assert code.close_code == 4000 + code.status
    assert 4400 <= code.close_code <= 4599


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_fields(code: ErrorCode) -> None:
    assert 400 <= code.status <= 599
    assert code.wire
    assert code.wire == code.wire.lower()
    assert code.title
    assert code.problem_type == f"https://pinrelay.dev/problems/{code.wire}"
    assert code.value == (code.wire, code.status, code.title)


def test_wire_codes_unique() -> None:
    wires = [code.wire for code in ErrorCode]
    assert len(wires) == len(set(wires))


def test_no_aliases() -> None:
    # Enum members with equal values would silently alias each other.
    assert len(ErrorCode.__members__) == len(list(ErrorCode))


def test_known_statuses() -> None:
    assert ErrorCode.BAD_REQUEST.close_code == 4400
    assert ErrorCode.HELLO_TIMEOUT.close_code == 4408
    assert ErrorCode.REPLACED.close_code == 4409
    assert ErrorCode.INVALID.close_code == 4422
    assert ErrorCode.OVERLOADED.close_code == 4503


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (PinrelayError, ErrorCode.INTERNAL),
        (LocalProtocolError, ErrorCode.INTERNAL),
        (RemoteProtocolError, ErrorCode.BAD_REQUEST),
        (LimitExceeded, ErrorCode.TOO_LARGE),
    ],
)
def test_default_codes(cls: type[PinrelayError], code: ErrorCode) -> None:
    exc = cls("detail")
    assert exc.code is code
    assert exc.detail == "detail"
    assert str(exc) == "detail"
    assert isinstance(exc, PinrelayError)


def test_code_override_is_per_instance() -> None:
    exc = RemoteProtocolError("x", ErrorCode.INVALID)
    assert exc.code is ErrorCode.INVALID
    assert RemoteProtocolError("y").code is ErrorCode.BAD_REQUEST
    assert RemoteProtocolError.code is ErrorCode.BAD_REQUEST


def test_overloaded_carries_retry_after() -> None:
    exc = Overloaded("busy", retry_after=1.5)
    assert exc.code is ErrorCode.OVERLOADED
    assert exc.retry_after == 1.5
    assert exc.detail == "busy"
    assert isinstance(exc, PinrelayError)
