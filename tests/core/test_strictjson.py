"""core/strictjson: what msgspec lets through and the relay refuses."""

from __future__ import annotations

import pytest

from pinrelay.core import strictjson


@pytest.mark.parametrize(
    "body",
    [b'{"a":1,"a":2}', b'[{"x":{"k":1,"k":1}}]', b'"caf\xe9"', b'"\xed\xa0\x80"'],
)
def test_refused(body: bytes) -> None:
    with pytest.raises(strictjson.StrictJsonError):
        strictjson.check(body)


@pytest.mark.parametrize("body", [b'{"a":1,"b":{"a":2}}', b'"\\ud800"', b"not json", b""])
def test_passed(body: bytes) -> None:
    strictjson.check(body)  # malformed JSON is the caller's decoder's to report


def test_too_deep_to_check_is_refused_not_passed() -> None:
    # Past the stdlib scanner's depth a repeated key could hide: refuse the body.
    deep = b'{"ttl":60,"data":' + b"[" * 5000 + b'{"a":1,"a":2}' + b"]" * 5000 + b"}"
    with pytest.raises(strictjson.StrictJsonError, match="deep"):
        strictjson.check(deep)


def test_valid_utf8_replaces_only_what_is_bad() -> None:
    assert strictjson.valid_utf8(b'{"t":"ok"}') == b'{"t":"ok"}'
    assert strictjson.valid_utf8(b'{"t":"caf\xe9"}') == '{"t":"caf\ufffd"}'.encode()
