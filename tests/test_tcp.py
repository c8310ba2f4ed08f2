"""TCP connections: /proc parsing, the new kernel's drop table, the old kernel's unlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kupgrade.output.record import Workload
from kupgrade.system import criu
from kupgrade.userspace import tcp, tcpfix

HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP4 = HEAD + (
    "   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n"
    "   1: 0F02000A:1B58 0202000A:A2F4 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n"
    "   2: 0100007F:0050 0100007F:C000 06 00000000:00000000 03:00000A3B 00000000     0        0 0 3 0\n")
TCP6 = HEAD + (
    "   0: 0000000000000000FFFF00000F02000A:1F90 0000000000000000FFFF00000202000A:9C40 01 00000000:00000000 "
    "00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n"
    "   1: 000080FE00000000FF005450563412FE:0016 000080FE00000000FF005450000002FE:D431 08 00000000:00000000 "
    "00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1\n")


def test_parse_v4_v6_and_mapped():
    s = tcp.parse_table(TCP4)
    assert [(x.local, x.lport, x.peer, x.pport, x.state, x.inode) for x in s] == [
        ("0.0.0.0", 7000, "0.0.0.0", 0, "LISTEN", 111),
        ("10.0.2.15", 7000, "10.0.2.2", 41716, "ESTABLISHED", 222),
        ("127.0.0.1", 80, "127.0.0.1", 49152, "TIME_WAIT", 0)]
    assert not s[0].connected and s[1].connected and s[2].loopback
    six = tcp.parse_table(TCP6)
    assert (six[0].local, six[0].peer, six[0].v6) == ("10.0.2.15", "10.0.2.2", False)   # mapped: on the wire IPv4
    assert (six[1].local, six[1].lport, six[1].peer, six[1].state) == ("fe80::5054:ff:fe12:3456", 22,
                                                                        "fe80::5054:ff:fe02:0", "CLOSE_WAIT")
    assert six[1].v6 and str(six[1]) == "[fe80::5054:ff:fe12:3456]:22 <-> [fe80::5054:ff:fe02:0]:54321"
    assert str(s[1]) == "10.0.2.15:7000 <-> 10.0.2.2:41716" and str(s[0]) == "0.0.0.0:7000 listen"


def fake_proc(tmp_path: Path, fds: dict[int, dict[int, str]]) -> Path:
    for pid, table in fds.items():
        d = tmp_path / str(pid) / "fd"
        d.mkdir(parents=True)
        for fd, target in table.items():
            os.symlink(target, d / str(fd))
        (tmp_path / str(pid) / "net").mkdir()
        (tmp_path / str(pid) / "net" / "tcp").write_text(TCP4)
        (tmp_path / str(pid) / "net" / "tcp6").write_text(TCP6)
    return tmp_path


def test_sockets_of_a_tree_only(tmp_path):
    proc = fake_proc(tmp_path, {10: {0: "/dev/null", 3: "socket:[111]", 4: "socket:[222]"},
                                11: {5: "socket:[333]", 6: "socket:[999]", 7: "pipe:[5]"}})
    got = tcp.sockets([10, 11], proc)
    assert sorted(s.inode for s in got) == [111, 222, 333]       # 444 belongs to someone else
    assert tcp.owned([10, 11], proc)[333] == (11, 5)
    assert tcp.sockets([12], proc) == []


def test_record_round_trip(tmp_path):
    socks = tcp.parse_table(TCP4)[:2]
    tcp.write(tmp_path, socks)
    assert tcp.read(tmp_path) == socks
    assert tcp.read(tmp_path / "none") == []


def test_ruleset_drops_only_the_inbound_packets_of_those_connections():
    socks = tcp.parse_table(TCP4) + tcp.parse_table(TCP6)
    text = tcp.ruleset(socks)
    # source = the peer, destination = us: the peer's packets, not ours (the restored socket's
    # window probe and retransmits must get out)
    assert "add element inet kupgrade conns4 { 10.0.2.2 . 40000 . 10.0.2.15 . 8080, " \
           "10.0.2.2 . 41716 . 10.0.2.15 . 7000 }" in text
    assert "add element inet kupgrade conns6 { fe80::5054:ff:fe02:0 . 54321 . fe80::5054:ff:fe12:3456 . 22 }" in text
    assert "0.0.0.0" not in text and "127.0.0.1" not in text      # listeners, TIME_WAIT: nothing to hold
    assert "hook prerouting priority raw - 10; policy accept;" in text
    rules = [l.strip() for l in text.splitlines() if "drop" in l]
    assert rules == ["ip saddr . tcp sport . ip daddr . tcp dport @conns4 counter drop",
                     "ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 counter drop"]
    # replaces a table left by an earlier boot, in the same transaction
    assert text.splitlines()[:2] == ["table inet kupgrade {}", "delete table inet kupgrade"]


class FakeRun:
    def __init__(self, replies=None):
        self.calls, self.replies = [], replies or {}

    def __call__(self, argv, input=None, timeout=None, check=True, hint=""):
        self.calls.append((argv, input.decode() if input else ""))
        out, rc = self.replies.get(" ".join(argv[:3]), ("", 0))
        return subprocess.CompletedProcess(argv, rc, out.encode(), b"")


LOAD_MODULE = tcp.load_module      # conftest stubs it for every test; this one checks what it runs


def test_install_and_release(monkeypatch, tmp_path):
    socks = tcp.parse_table(TCP4)
    fake = FakeRun()
    monkeypatch.setattr(tcp, "run", fake)
    monkeypatch.setattr(tcp, "load_module", lambda: LOAD_MODULE(loaded=tmp_path / "not-loaded"))
    assert tcp.install(socks[:1]) == 0 and fake.calls == []          # a listener alone: nothing to hold
    assert tcp.install(socks) == 1
    assert fake.calls[0][0] == ["modprobe", "nf_tables"] and fake.calls[1][0] == ["nft", "-f", "-"]
    listed = {"nftables": [{"table": {}}, {"set": {"name": "conns4", "elem": []}}, {"set": {"name": "conns6"}},
                           {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}},
                           {"rule": {"expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}}]}
    fake = FakeRun({"nft -j list": (json.dumps(listed), 0)})
    monkeypatch.setattr(tcp, "run", fake)
    done = tcp.release(socks)
    assert done == {"released": 1, "dropped_packets": 3, "table": "deleted"}
    assert fake.calls[0][1] == "delete element inet kupgrade conns4 { 10.0.2.2 . 41716 . 10.0.2.15 . 7000 }\n"
    assert fake.calls[-1][1] == "delete table inet kupgrade\n"


def test_nf_tables_is_not_loaded_again(monkeypatch, tmp_path):
    fake = FakeRun()
    monkeypatch.setattr(tcp, "run", fake)
    LOAD_MODULE(loaded=tmp_path)            # /sys/module/nf_tables is there
    assert fake.calls == []


def test_release_keeps_the_table_while_other_trees_wait(monkeypatch):
    listed = {"nftables": [{"set": {"name": "conns4", "elem": [{"concat": ["10.0.2.2", 1, "10.0.2.15", 2]}]}}]}
    fake = FakeRun({"nft -j list": (json.dumps(listed), 0)})
    monkeypatch.setattr(tcp, "run", fake)
    assert tcp.release(tcp.parse_table(TCP4)) == {"released": 1, "dropped_packets": 0}
    assert not any("delete table" in c[1] for c in fake.calls)


def test_release_never_raises(monkeypatch):
    def boom(*a, **k):
        raise OSError("nft: not found")
    monkeypatch.setattr(tcp, "run", boom)
    assert tcp.release(tcp.parse_table(TCP4))["error"] == "nft: not found"


def test_unlock_deletes_criu_lock_table(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(tcp, "run", fake)
    monkeypatch.setattr(tcp, "owned", lambda pids: {})
    monkeypatch.setattr(tcp.shutil, "which", lambda name: "/usr/sbin/" + name)
    done = tcp.unlock([tcp.parse_table(TCP4)[1]], [10], ["CRIU-10"])
    assert fake.calls == [(["nft", "-f", "-"], "delete table inet CRIU-10\n")]
    assert done == ["TCP: 0 of 1 connection(s) taken out of repair mode, criu's lock (table inet CRIU-10) deleted"]
    assert tcp.unlock(tcp.parse_table(TCP4)[:1], [10], ["CRIU-10"]) == []        # a listener: nothing to report
    assert fake.calls[-1] == (["nft", "-f", "-"], "delete table inet CRIU-10\n")   # an empty lock table goes too


def test_criu_flags():
    w = Workload("pid:300", 300, (300,))
    argv = criu.dump_argv(w, Path("/i"))
    assert "--tcp-established" in argv and "--skip-in-flight" in argv
    assert argv[argv.index("--network-lock") + 1] == "nftables"
    assert "--tcp-established" not in criu.restore_argv(Path("/i"), Path("/p"))
    assert "--tcp-established" in criu.restore_argv(Path("/i"), Path("/p"), tcp=True)


def test_window_scale_fix_runs_only_at_post_restore(tmp_path):
    script = tcp.action_script(tmp_path / "state")
    assert os.stat(script).st_mode & 0o777 == 0o700
    argv = criu.restore_argv(Path("/i"), Path("/p"), tcp=True, action_script=script)
    assert argv[argv.index("--action-script") + 1] == script
    env = {**os.environ, "CRTOOLS_SCRIPT_ACTION": "pre-resume"}
    assert subprocess.run([script], env=env).returncode == 0      # criu execs it; other actions: nothing
    assert Path(script).read_text().splitlines()[-1].endswith(f'-I -S {tcpfix.__file__} "$CRTOOLS_INIT_PID"')
    assert tcp.action_script(tmp_path / "state") == script        # idempotent
    assert tcp.Sock.from_json({**tcp.parse_table(TCP4)[1].to_json(), "wscale": False}).wscale is False
    assert tcp.Sock.from_json({k: v for k, v in tcp.parse_table(TCP4)[1].to_json().items() if k != "wscale"}).wscale


def test_tree_pids(tmp_path):
    for pid, kids in ((1, "2 3"), (2, "4"), (3, ""), (4, "")):
        d = tmp_path / str(pid) / "task" / str(pid)
        d.mkdir(parents=True)
        (d / "children").write_text(kids)
    assert sorted(tcpfix.tree_pids(1, tmp_path)) == [1, 2, 3, 4]


def test_fix_main_never_fails_the_restore():
    assert tcpfix.main([]) == 2
    assert tcpfix.main(["not-a-pid"]) == 0
    r = subprocess.run([sys.executable, "-I", "-S", tcpfix.__file__, "999999999"], capture_output=True)
    assert r.returncode == 0 and r.stderr == b""            # no such tree: nothing to fix, stdlib only


class NftDeletes(FakeRun):
    """nft that has only the tables in `have`."""
    def __init__(self, have):
        super().__init__()
        self.have = have

    def __call__(self, argv, input=None, timeout=None, check=True, hint=""):
        super().__call__(argv, input, timeout, check, hint)
        name = input.decode().split()[-1]
        return subprocess.CompletedProcess(argv, 0 if name in self.have else 1, b"", b"")


def test_unlock_finds_criu4_table_by_run_id(monkeypatch):
    run_id = "0b6f5c8e-2b61-4d5e-9a57-3e0f8f4b2c11"
    monkeypatch.setattr(tcp, "run", NftDeletes({f"CRIU-{run_id}"}))
    monkeypatch.setattr(tcp, "owned", lambda pids: {})
    monkeypatch.setattr(tcp.shutil, "which", lambda name: "/usr/sbin/" + name)
    done = tcp.unlock([tcp.parse_table(TCP4)[1]], [10], [f"CRIU-{run_id}", "CRIU-10"])
    assert done == [f"TCP: 0 of 1 connection(s) taken out of repair mode, criu's lock (table inet CRIU-{run_id}) deleted"]
    monkeypatch.setattr(tcp, "run", NftDeletes(set()))
    done = tcp.unlock([tcp.parse_table(TCP4)[1]], [10], [f"CRIU-{run_id}", "CRIU-10"])
    assert done[0].endswith(f"table inet CRIU-{run_id} or CRIU-10 not found")
