"""Browser tests of the web messenger: Playwright driving Debian's chromium.

Playwright cannot download its own browsers here, so pytest-playwright is pointed at
the system's chromium (shared/RECIPES.md; ``CHROMIUM_PATH`` overrides it; ``make
test`` installs ``chromium`` and ``fonts-liberation`` when missing).  The SDK device
of a test runs on an event loop of its own thread, since Playwright's sync API owns
the test's thread.  Screenshots go to ``test-artifacts/web/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserType, Playwright, expect, sync_playwright

from pinrelay.client.chat import Outgoing, State
from pinrelay.client.device import Device, Message
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

T = TypeVar("T")

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
#: Where a run leaves what a person may want to look at (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
#: Playwright's waits, in ms: every expect() polls up to this long.
WAIT_MS = 15_000 * TIMEOUT_FACTOR


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium fonts-liberation")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


# pytest-playwright's playwright and browser fixtures, scoped to this package instead
# of the session: while the sync API runs it holds an event loop on the test thread,
# which would fail every asyncio test that runs after tests/web.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser_type(playwright: Playwright, browser_name: str) -> BrowserType:
    found: BrowserType = getattr(playwright, browser_name)
    return found


@pytest.fixture(scope="package")
def launch_browser(
    browser_type_launch_args: dict[str, Any], browser_type: BrowserType
) -> Callable[..., Browser]:
    def launch(**kwargs: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="package")
def browser_context_args() -> dict[str, Any]:
    return {}  # pytest-playwright's asks its session-scoped playwright (for --device)


@pytest.fixture(scope="package")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    found = launch_browser()
    yield found
    found.close()


@pytest.fixture(scope="session", autouse=True)
def _patient_expect() -> None:
    expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class SdkDevice:
    """A device of the Python SDK on its own thread's event loop, for a sync test."""

    def __init__(self, relay: RelayProc, pin: str, token: str) -> None:
        self.pin = pin
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        def on_message(m: Message) -> None:
            with self._lock:
                self.messages.append(m)

        async def make() -> Device:
            return Device(pin, token, on_message, url=relay.url, backoff_max=1.0)

        self.device = self._call(make())
        self._running: Future[None] = asyncio.run_coroutine_threadsafe(
            self.device.run(), self._loop
        )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout * TIMEOUT_FACTOR)

    def send(self, to: str, text: str) -> Outgoing:
        return self._call(self.device.send(to, text))

    def wait_for(self, handle: Outgoing, state: State, timeout: float = 20.0) -> None:
        self._call(handle.wait_for(state, timeout * TIMEOUT_FACTOR), timeout + 5)

    def read(self, *ids: str) -> None:
        self._call(self.device.read(*ids))

    def chats(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.kind == "chat"]

    def stop(self) -> None:
        try:
            self._call(self.device.stop(), 10)
            self._running.result(10 * TIMEOUT_FACTOR)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def sdk_devices() -> Iterator[Callable[[RelayProc, dict[str, Any]], SdkDevice]]:
    """Start SDK devices; each is stopped at the end, even when the test fails."""
    started: list[SdkDevice] = []

    def start(relay: RelayProc, creds: dict[str, Any]) -> SdkDevice:
        device = SdkDevice(relay, creds["pin"], creds["token"])
        started.append(device)
        return device

    yield start
    for device in started:
        device.stop()
