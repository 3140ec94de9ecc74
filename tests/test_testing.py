"""pinrelay.testing: the polling waits, and that it imports without pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinrelay.testing import wait
from pinrelay.testing.ports import free_port, port_free
from pinrelay.testing.wait import wait_until, wait_until_async

SRC = Path(__file__).resolve().parents[1] / "src"


def test_wait_until_returns_the_first_true_value() -> None:
    calls = iter([0, None, "", 7, 8])
    assert wait_until(lambda: next(calls), 5.0, 0.001) == 7


def test_wait_until_times_out_with_the_message_and_the_last_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wait, "TIMEOUT_FACTOR", 2.0)
    values = iter(range(1000))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        wait_until(lambda: -next(values) > 0, 0.1, 0.01, "the counter going negative")
    elapsed = time.monotonic() - t0
    text = str(caught.value)
    assert "timed out after 0.2 s (x2): the counter going negative" in text
    assert "last value: False" in text
    assert 0.2 <= elapsed < 2.0  # 0.1 s scaled by the factor


def test_wait_until_message_may_be_a_function_called_at_the_end() -> None:
    state = {"n": 0}

    def bump() -> bool:
        state["n"] += 1
        return False

    with pytest.raises(TimeoutError, match=r"after \d+ tries"):
        wait_until(bump, 0.05, 0.01, lambda: f"after {state['n']} tries")
    assert state["n"] >= 2  # once more at the deadline


def test_wait_until_ignores_only_the_named_errors() -> None:
    failures = iter([OSError("refused"), OSError("refused")])

    def flaky() -> bool:
        for error in failures:
            raise error
        return True

    def down() -> bool:
        raise OSError("down")

    assert wait_until(flaky, 5.0, 0.001, ignore=(OSError,)) is True
    with pytest.raises(TimeoutError, match="last error: OSError"):
        wait_until(down, 0.05, 0.01, ignore=(OSError,))
    with pytest.raises(ValueError):
        wait_until(lambda: int("x"), 5.0, ignore=(OSError,))


async def test_wait_until_async_takes_plain_and_coroutine_predicates() -> None:
    values = iter([False, False, "done"])
    assert await wait_until_async(lambda: next(values), 5.0, 0.001) == "done"

    count = 0

    async def reaches_three() -> int | None:
        nonlocal count
        count += 1
        return count if count >= 3 else None

    assert await wait_until_async(reaches_three, 5.0, 0.001) == 3
    with pytest.raises(TimeoutError, match="never"):
        await wait_until_async(lambda: False, 0.05, 0.01, "never")


def test_free_port_is_below_the_ephemeral_range_and_not_repeated() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = [free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= p < low for p in picked)
    assert all(port_free("127.0.0.1", p) for p in picked)
    # Two pytest-xdist workers pick from slices of their own.
    script = (
        "from pinrelay.testing.ports import free_port as f; print(min(f() for _ in range(200)))"
    )
    lows = []
    for worker in ("gw0", "gw1"):
        env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "2"}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
        assert out.returncode == 0, out.stderr
        lows.append(int(out.stdout))
    middle = max(1024, low - 12_000) + (low - max(1024, low - 12_000)) // 2
    assert lows[0] < middle <= lows[1], lows
    with pytest.raises(OSError):
        free_port("192.0.2.1")  # not an address of this machine: an error, not a loop


def test_pinrelay_testing_imports_without_pytest() -> None:
    script = (
        "import json, sys\n"
        "import pinrelay.testing.ports, pinrelay.testing.wait, pinrelay.testing.procs\n"
        "import pinrelay.testing.natsproc, pinrelay.testing.relayproc\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytest', '_pytest', 'pytest_asyncio', 'tests'))))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
