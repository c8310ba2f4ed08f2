"""Clients on the host that talk to a guest's servers through QEMU's port forwarding while it is
upgraded: what they saw (answers, gaps, errors, reconnects) is the service's side of the story."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time


def largest_gap(times: list[float], since: float) -> float:
    pts = [t for t in times if t >= since]
    return max((b - a for a, b in zip(pts, pts[1:])), default=0.0)


class Writer:
    """A client that writes every 100 ms on one connection it keeps open, each write acknowledged
    by the server (`acked`: number -> when). A connection that fails is counted (errors) and made
    again (reconnects); a write that got no acknowledgement is not counted as written."""

    FAILURES: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self) -> None:
        self.acked: dict[int, float] = {}
        self.errors = self.reconnects = 0
        self.failures: list[tuple[float, str]] = []    # (when, what) of each error, for the result
        self.con = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _connect(self):
        raise NotImplementedError

    def _write(self, n: int) -> bool:
        """Write number n on self.con; True once the server acknowledged it."""
        raise NotImplementedError

    def _drop(self) -> None:
        try:
            self.con.close()
        except self.FAILURES:
            pass
        self.con = None

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.1):
            with self._lock:
                try:
                    if self.con is None:
                        self.con = self._connect()
                    n += 1
                    if self._write(n):
                        self.acked[n] = time.time()
                except self.FAILURES as e:
                    self.errors += 1
                    self.failures.append((time.time(), f"write {n}: {type(e).__name__}: {e}"))
                    if self.con is not None:
                        self._drop()
                        self.reconnects += 1

    def wait_acks(self, since: float, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while sum(1 for t in self.acked.values() if t >= since) < count and time.time() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        if self.con is not None:
            self._drop()


def _connect(port: int, timeout: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(timeout)
    return s


def _until(sock: socket.socket, end: bytes) -> bytes:
    """What the server sends until (and with) `end`."""
    buf = b""
    while not buf.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


class LineWriter(Writer):
    """A Writer on a plain TCP connection to the guest's `port` (answers awaited `answer_timeout`)."""

    def __init__(self, port: int, answer_timeout: float = 600) -> None:
        self.port, self.timeout = port, answer_timeout
        super().__init__()

    def _connect(self) -> socket.socket:
        return _connect(self.port, self.timeout)


class Notes(LineWriter):
    """The guest's note server (guest/notes.py): "put N", acknowledged with "ok N"."""

    def _ask(self, line: str) -> str:
        self.con.sendall((line + "\n").encode())
        return _until(self.con, b"\n").decode().strip()

    def _write(self, n: int) -> bool:
        return self._ask(f"put {n}") == f"ok {n}"

    def stat(self) -> dict:
        """The server's own account, on the same connection (or a new one if it is down)."""
        with self._lock:
            try:
                if self.con is None:
                    self.con = self._connect()
                return json.loads(self._ask("stat"))
            except (OSError, ValueError) as e:
                return {"error": str(e)}


class Memcached(LineWriter):
    """memcached's text protocol: "set vmtest:N", acknowledged with STORED; `kept` reads them
    back on a connection of its own."""

    def _write(self, n: int) -> bool:
        value = f"written {n}".encode()
        self.con.sendall(b"set vmtest:%d 0 0 %d\r\n%s\r\n" % (n, len(value), value))
        return _until(self.con, b"\r\n") == b"STORED\r\n"

    def kept(self, numbers: list[int]) -> set[int]:
        """Which of these sets memcached still has, with their values."""
        sock, found = _connect(self.port, 60), set()
        try:
            for i in range(0, len(numbers), 100):
                batch = numbers[i:i + 100]
                sock.sendall(("get " + " ".join(f"vmtest:{n}" for n in batch) + "\r\n").encode())
                lines = _until(sock, b"END\r\n").split(b"\r\n")
                for head, value in zip(lines, lines[1:]):
                    if head.startswith(b"VALUE vmtest:"):
                        n = int(head.split()[1].split(b":")[1])
                        found |= {n} if value == f"written {n}".encode() else set()
        finally:
            sock.close()
        return found


class Http(Writer):
    """An HTTP server asked for / every 100 ms on one keep-alive connection, as a browser or a
    proxy keeps one; an answer 200 acknowledges. A connection the server closed after saying so
    (`Connection: close`, nginx's keepalive_requests) is opened again without counting as a
    reconnect; one that broke is counted."""

    FAILURES = (OSError, http.client.HTTPException)

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__()

    def _connect(self) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        c.connect()
        return c

    server_closes = 0       # idle connections the server ended cleanly (FIN, no answer): asked again

    def _write(self, n: int) -> bool:
        try:
            r = self._get()
        except http.client.RemoteDisconnected:
            # a server may end an idle persistent connection at any time (nginx's old workers at a
            # reload); a client asks again on a new one (RFC 9112, 9.3.1). A broken connection
            # (reset, timeout) is an error.
            self.server_closes += 1
            self.con.close()
            self.con = self._connect()
            r = self._get()
        if r.will_close:            # announced: the next request opens a new one, as any client does
            self.con.close()
            self.con = self._connect()
        return r.status == 200

    def _get(self) -> http.client.HTTPResponse:
        self.con.request("GET", "/")
        r = self.con.getresponse()
        r.read()
        return r

    @property
    def ok(self) -> list[float]:
        return sorted(self.acked.values())


class Sql(Writer):
    """PostgreSQL (pg8000, pure Python): an INSERT in a transaction of its own, acknowledged by its
    COMMIT. `rows` reads back, on a connection of its own, what the table holds."""

    def __init__(self, port: int, password: str, table: str = "vmtest") -> None:
        import pg8000.exceptions
        self.port, self.password, self.table = port, password, table
        self.FAILURES = (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError, OSError)
        super().__init__()

    def _connect(self):
        import pg8000.native
        return pg8000.native.Connection("postgres", host="127.0.0.1", port=self.port, password=self.password,
                                        timeout=600)

    def _write(self, n: int) -> bool:
        self.con.run("BEGIN")
        self.con.run(f"INSERT INTO {self.table} (n) VALUES (:n)", n=n)
        self.con.run("COMMIT")
        return True

    def rows(self) -> set[int]:
        con = self._connect()
        try:
            return {r[0] for r in con.run(f"SELECT n FROM {self.table}")}
        finally:
            con.close()
