"""Waiting for a condition instead of sleeping: poll it until a scaled deadline.

``time.sleep(0.3); assert x`` fails on a slow machine and wastes 0.3 s on a fast
one; ``wait_until(lambda: x, 5.0, message="x")`` returns as soon as ``x`` holds and
fails with a message saying what did not happen.  Every timeout is multiplied by
:data:`TIMEOUT_FACTOR` (``PINRELAY_TEST_TIMEOUT_FACTOR``; 2 or 3 on a slow CI host).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: Scales every wait of the process-level tests (slow CI machines: set it to 2 or 3).
TIMEOUT_FACTOR = float(os.environ.get("PINRELAY_TEST_TIMEOUT_FACTOR", "1"))

Message = str | Callable[[], str]


def scaled(timeout: float) -> float:
    """``timeout`` multiplied by :data:`TIMEOUT_FACTOR`."""
    return timeout * TIMEOUT_FACTOR


def _timeout_error(
    message: Message, timeout: float, last: object, error: BaseException | None
) -> TimeoutError:
    text = message() if callable(message) else message
    seen = f"; last error: {error!r}" if error is not None else f"; last value: {last!r}"
    factor = f" (x{TIMEOUT_FACTOR:g})" if TIMEOUT_FACTOR != 1 else ""
    return TimeoutError(f"timed out after {scaled(timeout):g} s{factor}: {text}{seen}")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "condition not met",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns a true value, and
    return that value (a predicate may return what it waited for, or None); after
    ``timeout`` * :data:`TIMEOUT_FACTOR` s raise :class:`TimeoutError` with
    ``message`` (a string, or a function giving one then) and the last value seen.

    Exceptions of the types in ``ignore`` count as "not yet" (a server restarting).
    The predicate is called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    error: BaseException | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = predicate()
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if expired:
            raise _timeout_error(message, timeout, last, error)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))  # poll interval


@overload
async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
    *,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_until_async(
    predicate: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
    *,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_until_async(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "condition not met",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """:func:`wait_until` for a running event loop: ``predicate`` may be a plain
    function or a coroutine function, and the loop runs between polls."""
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    error: BaseException | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if expired:
            raise _timeout_error(message, timeout, last, error)
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))  # poll interval
