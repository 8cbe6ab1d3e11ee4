"""The master <-> worker pipe: length-prefixed frames over a socketpair.

Why a socketpair per worker and not shared memory or a file: the config text is the message (the
worker builds its Snapshot from exactly what the master validated, never re-reading a file that may
have changed again), the kernel tells each side when the other is gone (EOF), and there is no
locking. Frames are `kind (1 byte) | generation (u64) | length (u32) | payload`.

Both sides use the loop's `sock_recv`/`sock_sendall` on a plain socket rather than stream
transports, so the socket object stays the owner of its descriptor; a freshly forked worker can
close the master's other ends with `socket.close()` and nothing else will close them twice.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

CONFIG = b"C"  # master -> worker: serve this config text (payload: UTF-8 YAML)
READY = b"R"  # worker -> master: listening on every listener
APPLIED = b"A"  # worker -> master: generation applied (payload: JSON {"ok": bool, "error": ...})
METRICS_ASK = b"M"  # master -> worker: report your metric totals (generation: the ask's number)
METRICS = b"S"  # worker -> master: metric totals (JSON); generation 0 is the last one, at exit

_HEADER = struct.Struct("!cQI")
MAX_PAYLOAD = 256 * 1024 * 1024  # far above any valid config (32 MiB of text); guards the reader
_RECV = 256 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    kind: bytes
    generation: int
    payload: bytes


def encode(kind: bytes, generation: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, generation, len(payload)) + payload


class ProtocolError(Exception):
    """The peer sent something that is not a frame: treat the channel as broken."""


class Channel:
    """One end of a socketpair, read and written from the running loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._buf = bytearray()
        self._send_lock = asyncio.Lock()

    async def send(self, kind: bytes, generation: int, payload: bytes = b"") -> None:
        """Send one frame whole; frames from concurrent senders never interleave."""
        data = encode(kind, generation, payload)
        async with self._send_lock:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def receive(self) -> Frame | None:
        """The next frame, or None when the peer has closed its end (or died)."""
        loop = asyncio.get_running_loop()
        need = _HEADER.size
        while True:
            if len(self._buf) >= need:
                kind, generation, length = _HEADER.unpack_from(self._buf)
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"frame of {length} bytes")
                need = _HEADER.size + length
                if len(self._buf) >= need:
                    payload = bytes(self._buf[_HEADER.size : need])
                    del self._buf[:need]
                    return Frame(kind, generation, payload)
            try:
                chunk = await loop.sock_recv(self.sock, max(_RECV, need - len(self._buf)))
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self._buf += chunk

    def read_buffered(self) -> list[Frame]:
        """The whole frames the peer sent that nobody has read yet, without waiting: for a
        worker that has just exited, whose last words (its final metric totals) may still sit
        in the socket when it is reaped."""
        frames = []
        while True:
            try:
                chunk = self.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError, ConnectionResetError, OSError):
                break
            if not chunk:
                break
            self._buf += chunk
        while len(self._buf) >= _HEADER.size:
            kind, generation, length = _HEADER.unpack_from(self._buf)
            end = _HEADER.size + length
            if length > MAX_PAYLOAD or len(self._buf) < end:
                break
            frames.append(Frame(kind, generation, bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return frames

    def close(self) -> None:
        self.sock.close()  # idempotent
