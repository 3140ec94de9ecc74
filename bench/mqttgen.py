"""MQTT subscribers for the Mosquitto comparison (a child process of bench.throughput).

``python -m bench.mqttgen`` connects ``--count`` paho-mqtt clients, each with a
persistent session (clean_session=False, MQTT 3.1.1) subscribed at QoS 1 to its own
topic ``dev/<n>``, and counts what arrives; paho acknowledges each message (PUBACK).
It talks JSON lines like bench.linkgen: events on stdout, ``stats``/``quit`` on stdin.

All clients share one asyncio loop (paho's external-loop hooks: a reader per
socket, a writer while paho has bytes queued), so hundreds of subscribers cost
one process and no threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode


class AsyncioMqtt:
    """Drives many paho clients from one asyncio loop (no loop_start threads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: list[mqtt.Client] = []
        self._misc: asyncio.Task[None] | None = None

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        self.clients.append(client)
        if self._misc is None:
            self._misc = self.loop.create_task(self._misc_loop())

    def _open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for client in self.clients:
                client.loop_misc()

    def close(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.disconnect()


def new_client(client_id: str, *, persistent: bool, inflight: int = 20) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    return client


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
    sys.stdout.flush()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Subscribers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connected = 0
        self.subscribed = 0
        self.failed = 0
        self.received = 0
        self.complete_t = 0.0
        self.expect: int = args.expect
        self.all_subscribed = asyncio.Event()

    def counters(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "subscribed": self.subscribed,
            "failed": self.failed,
            "received": self.received,
        }

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.failed += 1
            return
        self.connected += 1
        client.subscribe(userdata, qos=1)

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.failed += 1
        else:
            self.subscribed += 1
        if self.subscribed + self.failed >= self.args.count:
            self.all_subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        if self.expect and self.received == self.expect:
            self.complete_t = time.time()
            emit("complete", t=self.complete_t, received=self.received)


async def report(subs: Subscribers, interval: float) -> None:
    last: dict[str, Any] = {}
    while True:
        await asyncio.sleep(interval)
        now = subs.counters()
        if now != last:
            emit("progress", **now)
            last = now


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    driver = AsyncioMqtt(loop)
    subs = Subscribers(args)
    reporter = loop.create_task(report(subs, args.report_interval))
    started = time.perf_counter()
    for n in range(args.first, args.first + args.count):
        client = new_client(f"{args.prefix}{n}", persistent=True, inflight=args.inflight)
        client.user_data_set(f"dev/{n}")
        client.on_connect = subs.on_connect
        client.on_subscribe = subs.on_subscribe
        client.on_message = subs.on_message
        driver.attach(client)
        rc = client.connect(args.host, args.port, keepalive=args.keepalive)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            subs.failed += 1
        if n % 50 == 0:
            await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subs.all_subscribed.wait(), 120.0)
    emit("ready", **subs.counters(), seconds=time.perf_counter() - started, rss_kb=rss_kb())

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            command = line.decode().strip()
            if command == "stats":
                emit("stats", **subs.counters(), rss_kb=rss_kb())
            elif command == "quit":
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(commands(), args.max_seconds)
    reporter.cancel()
    driver.close()
    await asyncio.sleep(0.2)
    emit("bye", **subs.counters())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="Mosquitto's port")
    parser.add_argument("--first", type=int, default=0, help="first device number")
    parser.add_argument("--count", type=int, required=True, help="subscribers")
    parser.add_argument("--prefix", default="bench-sub-", help="client id prefix")
    parser.add_argument("--expect", type=int, default=0, help="say 'complete' after this many")
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--keepalive", type=int, default=600)
    parser.add_argument("--report-interval", type=float, default=0.25)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this")
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse_args()))
