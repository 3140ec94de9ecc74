"""The `pinrelay` command as a user runs it: --json everywhere, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import RelayFactory
from tests.relayproc import RelayProc, free_port


def run(
    *args: str,
    key: str | None = None,
    url: str | None = None,
    timeout: float = 60,
    columns: int | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    if key is not None:
        env["PINRELAY_KEY"] = key
    if url is not None:
        env["PINRELAY_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok_json(relay: RelayProc, *args: str) -> Any:
    r = run(*args, "--json", key=relay.admin_key, url=relay.url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess[str], contains: str) -> None:
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    # One error line, last: a command may have said what it was doing before it.
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert contains in errors[0], errors[0]
    assert "Traceback" not in r.stderr


def test_every_data_command_speaks_json(relay: RelayProc) -> None:
    assert ok_json(relay, "version")["version"]
    assert ok_json(relay, "info")["link_urls"] == [relay.link_url]
    device = ok_json(relay, "device", "create", "--label", "cli")
    pin = device["pin"]
    pushed = ok_json(relay, "push", pin, "--data", '{"a": 1}', "--ttl", "60", "--topic", "t")
    assert pushed["cursor"] == 1
    shown = ok_json(relay, "device", "show", pin)
    assert (shown["backlog"], shown["label"]) == (1, "cli")
    r = run(
        "listen", "--pin", pin, "--token", device["token"], "--count", "1", "--json", url=relay.url
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[0])
    assert (got["data"], got["cursor"], got["topic"]) == ({"a": 1}, 1, "t")
    assert ok_json(relay, "device", "show", pin)["backlog"] == 0
    rotated = ok_json(relay, "device", "rotate", pin)
    assert rotated["token"] != device["token"]
    key = ok_json(relay, "key", "create", "--name", "app", "--scope", "push")
    assert key["key"].startswith("prk_")
    assert [k["name"] for k in ok_json(relay, "key", "list")] == ["app"]
    assert ok_json(relay, "key", "revoke", key["id"]) == {"id": key["id"], "revoked": True}
    assert ok_json(relay, "device", "delete", pin) == {"pin": pin, "deleted": True}


def test_errors_are_one_readable_line(relay: RelayProc) -> None:
    one_line_error(run("device", "create", key="wrong", url=relay.url), "401")
    one_line_error(run("device", "show", "0BADF00D", key=relay.admin_key, url=relay.url), "404")
    one_line_error(run("push", "0BADF00D", "--data", "{nope", key="k", url=relay.url), "not JSON")
    one_line_error(
        run("key", "create", "--name", "x", "--scope", "root", key="k", url=relay.url), "--scope"
    )
    device = relay.create_device()
    one_line_error(
        run("listen", "--pin", device["pin"], "--token", "bad", url=relay.url), "unauthorized"
    )
    one_line_error(run("info", url=f"http://127.0.0.1:{free_port()}"), "cannot reach")
    # Usage errors, which the command line's parser finds: one line too, status 2.
    for args, contains in [
        (["send", device["pin"], "hi", "--ttl", "soon"], "--ttl"),
        (["send", device["pin"]], "Missing argument"),
        (["device", "show", "--bogus"], "No such option: --bogus"),
    ]:
        r = run(*args, url=relay.url)
        one_line_error(r, contains)
        assert r.returncode == 2, r.stderr


def create_device_in(folder: Path, relay: RelayProc) -> subprocess.CompletedProcess[str]:
    """``pinrelay device create`` run in ``folder``, with no PINRELAY_* variables: the
    key, if any, is the folder's data/admin.key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", "device", "create", "--url", relay.url],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_key_anywhere(tmp_path: Path, relay: RelayProc) -> None:
    one_line_error(create_device_in(tmp_path, relay), "no API key")


def test_a_refused_key_from_data_admin_key_names_the_file(tmp_path: Path, relay: RelayProc) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.key").write_text("pra_another_relays_key\n")
    r = create_device_in(tmp_path, relay)
    one_line_error(r, "401")
    assert "data/admin.key" in r.stderr and "PINRELAY_KEY" in r.stderr


def test_serve_on_a_busy_port_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--port",
            str(free_port()),
            "--link-port",
            str(port),
            timeout=30,
        )
    one_line_error(r, "cannot start")
    assert "--port and --link-port" in r.stderr  # what to do about it


def test_serve_prints_where_things_are(relay_factory: RelayFactory) -> None:
    # A long folder with brackets: each line whole (no wrap at 80 columns in a log),
    # and the path shown as it is, not read as rich markup.
    relay = relay_factory("data-[bold]-" + "x" * 80, admin_key=None)
    lines = relay.wait_output("capacity").splitlines()
    assert f"  data        {relay.data.resolve()}" in lines
    out = " ".join(lines)
    assert f"http://127.0.0.1:{relay.port}" in out
    assert relay.link_url in out
    assert "admin.key" in out
    assert "capacity" in out


def test_listen_prints_each_message_on_one_line_as_sent(relay: RelayProc) -> None:
    """From the tour of issue 14: `listen` took pushed text for rich markup (a `[/]`
    in a push crashed it, and the message was never acknowledged, so every later
    `listen` crashed on it too), cut lines at 80 columns when piped, and with
    `--count 1` printed a whole burst of backlog."""
    device = relay.create_device()
    pin = device["pin"]
    sent = [{"text": "[/] [bold]not markup"}, {"text": "long " * 40}, {"text": "third"}]
    with relay.client() as c:
        for i, data in enumerate(sent, 1):
            c.push(pin, data, ttl=600, topic=f"t{i}")

    def listen(count: int) -> list[str]:
        r = run("listen", "--pin", pin, "--token", device["token"], "--count", str(count),
                url=relay.url)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    [first] = listen(1)
    assert first.endswith(f"#1 {json.dumps(sent[0])} topic=t1"), first
    # Exactly one printed, and exactly that one acknowledged.
    assert ok_json(relay, "device", "show", pin)["backlog"] == 2
    second, third = listen(2)
    assert second.endswith(f"#2 {json.dumps(sent[1])} topic=t2"), second
    assert "#3 " in third


def test_records_and_tables_show_data_not_markup(relay: RelayProc) -> None:
    label = "[/]odd [bold]label"
    device = ok_json(relay, "device", "create", "--label", label)
    r = run("device", "show", device["pin"], key=relay.admin_key, url=relay.url)
    assert r.returncode == 0, r.stderr
    assert label in r.stdout
    ok_json(relay, "key", "create", "--name", label, "--scope", "push")
    r = run("key", "list", key=relay.admin_key, url=relay.url)
    assert r.returncode == 0, r.stderr
    assert "[/]odd" in r.stdout


def test_tables_keep_ids_whole_and_every_header_at_80_columns(relay: RelayProc) -> None:
    """One table style: ids (what other commands take) whole, long values folded,
    no column name cut."""
    long_name = "a key with a name much longer than its column in an 80-column table"
    created = ok_json(relay, "key", "create", "--name", long_name, "--scope", "push")
    r = run("key", "list", key=relay.admin_key, url=relay.url, columns=80)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    assert created["id"] in r.stdout.split()
    header = r.stdout.splitlines()[0].split()
    assert header == ["id", "name", "scope", "tenant", "created", "revoked"]
    assert max(map(len, r.stdout.splitlines())) <= 80


def test_help_wraps_at_the_terminals_width_not_the_sources() -> None:
    """A docstring's paragraphs are joined: a narrow terminal does not break them
    mid-sentence where the source's lines end."""
    from pinrelay.cli import app

    def paragraphs(a: Any) -> list[str]:
        found = [p for i in a.registered_commands for p in (i.help or "").split("\n\n")]
        for group in a.registered_groups:
            found += paragraphs(group.typer_instance)
        return found

    texts = paragraphs(app)
    assert len(texts) > 50
    assert [p for p in texts if "\n" in p] == []
    r = run("listen", "--help", columns=80)
    assert r.returncode == 0, r.stderr
    assert "(--keys); one it cannot decrypt" in r.stdout
    # serve's 47 options in panels of their own widths: one long name or range does
    # not squeeze every help text into a narrow column.
    r = run("serve", "--help", columns=80)
    assert r.returncode == 0, r.stderr
    assert "Folder for the database and admin key." in r.stdout
    assert "Cluster store (--store)" in r.stdout
