"""Start and stop a throwaway local ``redis-server`` (tests, and ``turnout serve`` with
``cache_store: {kind: redis, spawn_local: true}``): no persistence, a private temp dir, a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class RedisUnavailable(RuntimeError):
    """``redis-server`` is not installed or did not start."""


@dataclass
class LocalRedis:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def spawn_redis(port: int | None = None, *, binary: str = "redis-server", timeout_s: float = 10.0) -> LocalRedis:
    """Start ``redis-server --port P --save '' --appendonly no`` in a temp dir and wait for PONG."""
    exe = shutil.which(binary)
    if exe is None:
        raise RedisUnavailable(f"{binary} not found on PATH (Debian: apt-get install -y redis-server)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="turnout-redis-"))
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answers(port):
            return LocalRedis(proc, port, workdir)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    LocalRedis(proc, port, workdir).stop()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {timeout_s:.0f}s")


def ensure_local_redis(url: str) -> LocalRedis | None:
    """Spawn a local server on ``url``'s port unless something already answers there."""
    parsed = urlparse(url)
    port = parsed.port or 6379
    if parsed.hostname not in ("127.0.0.1", "localhost") or answers(port):
        return None
    return spawn_redis(port)
