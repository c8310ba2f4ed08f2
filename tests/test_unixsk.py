"""Unix sockets shared with processes outside a tree (kupgrade/userspace/unixsk.py), on real sockets:
the kernel's sock_diag answers as it does for criu."""

import socket
import subprocess
import sys

from kupgrade.userspace import unixsk

CHILD = """
import socket, sys, time
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.connect(sys.argv[1])                  # like syslog()'s /dev/log
a, b = socket.socketpair()                # both ends in the tree: not external
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if len(sys.argv) > 2:
    s.connect(sys.argv[2])                # a stream to a server outside
print(log.fileno(), s.fileno(), flush=True)
time.sleep(60)
"""


def test_connections_outside_the_tree(tmp_path):
    devlog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    devlog.bind(str(tmp_path / "dev-log"))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "bus"))
    server.listen(1)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "dev-log")], stdout=subprocess.PIPE)
    q = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "dev-log"), str(tmp_path / "bus")],
                         stdout=subprocess.PIPE)
    try:
        log_fd, _ = map(int, p.stdout.readline().split())
        _, bus_fd = map(int, q.stdout.readline().split())
        conn, _ = server.accept()
        found = [(pid, fd, s.type, peer.name) for pid, fd, s, peer in unixsk.external([p.pid])]
        assert found == [(p.pid, log_fd, socket.SOCK_DGRAM, str(tmp_path / "dev-log"))]
        assert unixsk.needs_ext_unix_sk([p.pid])
        assert unixsk.blockers([p.pid], "cron.service") == []       # a unit: --ext-unix-sk, restored late
        b = unixsk.blockers([p.pid], "")
        assert len(b) == 1 and f"datagram connection to {tmp_path / 'dev-log'}" in b[0].message
        assert "restored in the initramfs, before that socket exists" in b[0].message
        stream = [x.message for x in unixsk.blockers([q.pid], "app.service") if "stream" in x.message]
        assert len(stream) == 1 and f"PID {q.pid} (" in stream[0] and f") fd {bus_fd}: a stream connection to" in stream[0]
        assert stream[0].endswith("the peer is not in the tree: the connection would be cut")
        conn.close()
    finally:
        for x in (p, q):
            x.kill()
            x.wait()
        devlog.close()
        server.close()
