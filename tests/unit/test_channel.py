"""The master <-> worker channel's framing, over a real socketpair: what the master reads from a
worker that has just exited (its last metric totals) without waiting."""

from __future__ import annotations

import socket

from ando.runtime import channel


def test_read_buffered_returns_the_whole_frames_and_keeps_a_partial_one():
    master, worker = socket.socketpair()
    try:
        ch = channel.Channel(master)
        last = channel.encode(channel.METRICS, 0, b'{"requests": 7}')
        partial = channel.encode(channel.READY, 3, b"")[:5]
        worker.sendall(channel.encode(channel.APPLIED, 2, b'{"ok": true}') + last + partial)
        frames = ch.read_buffered()
        assert [(f.kind, f.generation, f.payload) for f in frames] == [
            (channel.APPLIED, 2, b'{"ok": true}'),
            (channel.METRICS, 0, b'{"requests": 7}'),
        ]
        worker.close()  # the worker is gone: nothing more, and no error
        assert ch.read_buffered() == []
    finally:
        master.close()
        worker.close()


def test_read_buffered_on_a_quiet_channel_does_not_wait():
    master, worker = socket.socketpair()
    try:
        assert channel.Channel(master).read_buffered() == []
    finally:
        master.close()
        worker.close()
