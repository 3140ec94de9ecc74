"""Guard: the ``pinrelay`` command imports what a command uses when it runs.

Every relay and every CLI call is a new process that pays for its imports (tests
start hundreds): the link SDK (websockets' client, cryptography, http-ece), httpx and
rich's tables load in the commands that use them, and nats-py (with aiohttp) only
for a relay on the cluster store.
"""

from __future__ import annotations

from tests.freshimports import modules_after


def loaded(modules: list[str], absent: list[str]) -> list[str]:
    """Which of ``absent`` a fresh interpreter holds after importing ``modules``."""
    held = set(modules_after(modules))
    return sorted(m for m in absent if m in held)


def test_the_cli_module_loads_no_client_sdk() -> None:
    heavy = [
        "asyncio",
        "httpx",
        "websockets",
        "cryptography",
        "rich.table",
        "pinrelay.client.device",
        "pinrelay.client.http",
        "pinrelay.relay",
        "nats",
    ]
    assert loaded(["pinrelay.cli"], heavy) == []


def test_a_relay_on_sqlite_loads_no_nats() -> None:
    heavy = ["nats", "aiohttp", "httpx", "pinrelay.store.jetstream", "pinrelay.router.nats"]
    assert loaded(["pinrelay.cli", "pinrelay.relay"], heavy) == []


def test_a_relay_draws_charts_with_matplotlib_only_when_asked() -> None:
    heavy = ["matplotlib", "numpy", "PIL", "pinrelay.report_chart"]
    assert loaded(["pinrelay.cli", "pinrelay.relay", "pinrelay.api.app"], heavy) == []
