"""The fast path's parser of ``/push/{sub}`` (api/app.py) takes what Starlette's
route takes and nothing else: any other path falls through to the router."""

from __future__ import annotations

import pytest

from pinrelay.api.webpush import push_path_sub


@pytest.mark.parametrize(
    ("path", "sub"),
    [
        ("/push/AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA"),
        ("/push/x", "x"),  # malformed ids are the handler's 404, not the router's
        ("/push/", None),
        ("/push", None),
        ("/push/abc/messages/m.1", None),
        ("/push/abc/", None),
        ("/v1/push/abc", None),
        ("/pushx/abc", None),
    ],
)
def test_push_path_sub(path: str, sub: str | None) -> None:
    assert push_path_sub(path) == sub
