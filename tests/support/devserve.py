"""Temporary single-worker launcher used only while `ando run` cannot serve yet (set
ANDO_TEST_LAUNCHER=dev). It runs the same Gateway the workers run. To be removed once the runtime
lands."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from ando.config.source import load_snapshot
from ando.proxy.gateway import Gateway


async def main(path: str) -> None:
    snap = load_snapshot(path)
    gw = Gateway(snap)
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(gw.protocol_factory(lst), lst.host, lst.port, reuse_port=True)
        for lst in snap.node.listen
    ]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gw.swap(load_snapshot(path)))
    await stop.wait()
    for s in servers:
        s.close()
    gw.begin_drain()
    await gw.wait_idle(10)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
