"""Clients on the host that talk to a guest's servers through QEMU's port forwarding while it is
upgraded: what they saw (answers, gaps, errors, reconnects) is the service's side of the story."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time


class Poller:
    """The host asks an HTTP server for / every 100 ms; the answers' times give its downtime."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    self.ok.append(time.time())
                c.close()
            except (OSError, http.client.HTTPException):
                self.errors += 1

    def largest_gap(self, since: float) -> float:
        return largest_gap(self.ok, since)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)


def largest_gap(times: list[float], since: float) -> float:
    pts = [t for t in times if t >= since]
    return max((b - a for a, b in zip(pts, pts[1:])), default=0.0)


class Notes:
    """One connection to the guest's note server (guest/notes.py), kept open: "put N" every
    100 ms, each acknowledged with "ok N". A connection that fails is counted (errors) and made
    again (reconnects); a put that got no "ok" is not counted as written."""

    def __init__(self, port: int, answer_timeout: float = 600) -> None:
        self.port, self.timeout = port, answer_timeout
        self.acked: dict[int, float] = {}
        self.errors = self.reconnects = 0
        self.sock: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.settimeout(self.timeout)
        return s

    def _ask(self, line: str) -> str:
        assert self.sock is not None
        self.sock.sendall((line + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        return buf.decode().strip()

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.1):
            with self._lock:
                try:
                    if self.sock is None:
                        self.sock = self._connect()
                    n += 1
                    if self._ask(f"put {n}") == f"ok {n}":
                        self.acked[n] = time.time()
                except OSError:
                    self.errors += 1
                    if self.sock is not None:
                        self.sock.close()
                        self.sock = None
                        self.reconnects += 1

    def stat(self) -> dict:
        """The server's own account, on the same connection (or a new one if it is down)."""
        with self._lock:
            try:
                if self.sock is None:
                    self.sock = self._connect()
                return json.loads(self._ask("stat"))
            except (OSError, ValueError) as e:
                return {"error": str(e)}

    def wait_acks(self, since: float, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while sum(1 for t in self.acked.values() if t >= since) < count and time.time() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        if self.sock is not None:
            self.sock.close()


class Sql:
    """One connection to PostgreSQL (pg8000, pure Python) kept open: every 100 ms an INSERT in a
    transaction of its own, acknowledged by its COMMIT. A connection that fails is counted
    (errors) and made again (reconnects); an insert whose COMMIT got no answer is not counted as
    written. `rows` reads back, on a connection of its own, what the table holds."""

    def __init__(self, port: int, password: str, table: str = "vmtest") -> None:
        self.port, self.password, self.table = port, password, table
        self.acked: dict[int, float] = {}
        self.errors = self.reconnects = 0
        self.con = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _connect(self):
        import pg8000.native
        return pg8000.native.Connection("postgres", host="127.0.0.1", port=self.port, password=self.password,
                                        timeout=600)

    def _loop(self) -> None:
        import pg8000.exceptions
        n = 0
        while not self._stop.wait(0.1):
            try:
                if self.con is None:
                    self.con = self._connect()
                n += 1
                self.con.run("BEGIN")
                self.con.run(f"INSERT INTO {self.table} (n) VALUES (:n)", n=n)
                self.con.run("COMMIT")
                self.acked[n] = time.time()
            except (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError, OSError):
                self.errors += 1
                if self.con is not None:
                    try:
                        self.con.close()
                    except (pg8000.exceptions.InterfaceError, OSError):
                        pass
                    self.con = None
                    self.reconnects += 1

    def wait_acks(self, since: float, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while sum(1 for t in self.acked.values() if t >= since) < count and time.time() < deadline:
            time.sleep(0.1)

    def rows(self) -> set[int]:
        con = self._connect()
        try:
            return {r[0] for r in con.run(f"SELECT n FROM {self.table}")}
        finally:
            con.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
