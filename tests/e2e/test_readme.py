"""The README's five-minute tour, run as written against a fresh relay.

The tour's commands are taken from README.md itself (every ```sh block under "A
five-minute tour"), so a tour that stops working fails here.  The relay runs in
the tour's folder like `make run` would, on free ports that PINRELAY_URL names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR

README = Path(__file__).resolve().parents[2] / "README.md"


def section_commands(title: str, at_least: int) -> str:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= at_least, f"{title!r} lost its commands"
    return "\n".join(re.sub(r"^ {3}", "", b, flags=re.M) for b in blocks)


def tour_commands() -> str:
    return section_commands("A five-minute tour", 4)


def run_script(relay_factory: RelayFactory, tmp_path: Path, commands: str) -> str:
    """``commands`` in a shell, in a folder like the tour's, against a fresh relay."""
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    relay = relay_factory("data", admin_key=None, cwd=tmp_path)
    assert (tmp_path / "data" / "admin.key").exists()
    script = "set -euo pipefail\n" + commands
    env = {**os.environ, "PINRELAY_URL": relay.url}
    env.pop("PINRELAY_ADMIN_KEY", None)
    env.pop("PINRELAY_KEY", None)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 * TIMEOUT_FACTOR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_readme_tour_then_chat_between_devices(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """The tour, then "Chat between devices" as written (its commands need no terminal).

    One run for both: the chat section continues the tour (its ``$PIN``), so a run
    of the tour alone would repeat every command of this one."""
    out = run_script(
        relay_factory,
        tmp_path,
        tour_commands() + "\n" + section_commands("Chat between devices", 1),
    )
    # The tour's own results (step 5 shows the device before the chat begins).
    assert '{"text": "hello"}' in out and '{"text": "second"}' in out, out
    assert re.search(r"backlog\s+0\b", out), out
    assert re.search(r"acked_cursor\s+2\b", out), out
    friend = json.loads((tmp_path / "friend.json").read_text())["pin"]
    assert f"invited {friend}" in out, out
    assert re.search(rf"{friend}\s+accepted", out), out
    assert re.search(r"^[0-9A-HJKMNP-TV-Z]{26}$", out, flags=re.M), out


def test_readme_web_push(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """The tour, then "Web Push" as written: subscribe with a VAPID key, push with
    pywebpush (`pinrelay webpush send`), and listen decrypts it."""
    out = run_script(
        relay_factory, tmp_path, tour_commands() + "\n" + section_commands("Web Push", 1)
    )
    subscription = json.loads((tmp_path / "subscription.json").read_text())
    assert set(subscription) == {"endpoint", "expirationTime", "keys"}
    assert re.search(r"^201 Created  Location: ", out, flags=re.M), out
    assert "webpush " in out and '"hello over Web Push"' in out, out
