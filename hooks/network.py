"""network: links, addresses and routes, restored before the workloads (what TCP needs).

CRIU restores a TCP connection only if its local address exists again; the new kernel boots
with no addresses until the distribution's networking runs, which is after the restore. So
save records `ip -j addr show` and the main routing tables, restore re-applies them, verify
compares.

Interfaces are matched by MAC address, not name: names can change across kernels (udev's
predictable names depend on driver and firmware details). Loopback matches loopback; links
without a MAC (tun, wireguard) match by name. Everything is idempotent: what is already
there is skipped, and `ip addr replace` / `ip route replace` do not fail if the distribution's
networking got there first. Not recreated: virtual links (bridges, VLANs, bonds, veth), policy
routing tables, neighbour entries; a saved link with addresses and no match is a failure.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kupgrade.system.run import run

WAIT_S = 10.0           # how long restore waits for the saved interfaces to appear
ROUTE_TYPES = ("blackhole", "unreachable", "prohibit")


def describe() -> dict:
    return {"name": "network", "points": ["save", "restore", "verify"], "match": [{"subsystem": "net"}],
            "critical": False, "timeout": 60,
            "description": "links (MTU, up), addresses and routes, matched by MAC address"}


def _ip(*args: str) -> list:
    out = run(["ip", "-j", *args], timeout=20).stdout.decode()
    return json.loads(out) if out.strip() else []


CAPTURE = {"links": ("addr", "show"), "routes": ("-4", "route", "show"), "routes6": ("-6", "route", "show")}


def capture() -> dict:
    """The three `ip` at once: save and restore run inside the pause, where under QEMU TCG each
    takes ~0.1 s."""
    with ThreadPoolExecutor(len(CAPTURE), thread_name_prefix="network-ip") as pool:
        done = {key: pool.submit(_ip, *args) for key, args in CAPTURE.items()}
        return {key: f.result() for key, f in done.items()}


# --- planning: pure functions over `ip -j` JSON (tests feed them captured output) ---

def _mac(link: dict) -> str:
    mac = link.get("address", "")
    return "" if link.get("link_type") == "loopback" or mac in ("", "00:00:00:00:00:00") else mac


def _addresses(link: dict) -> list[dict]:
    """The addresses to restore: not IPv6 link-local (the kernel makes those from the MAC)."""
    return [a for a in link.get("addr_info", [])
            if "local" in a and not (a.get("family") == "inet6" and a.get("scope") == "link")]


def match_links(saved: list[dict], current: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """Saved name -> current name, and saved name -> why it has no match."""
    mapping, missing = {}, {}
    for s in saved:
        name = s["ifname"]
        if s.get("link_type") == "loopback":
            found = [c for c in current if c.get("link_type") == "loopback"]
        elif _mac(s):
            found = [c for c in current if _mac(c) == _mac(s) and c.get("link_type") == s.get("link_type")]
            if len(found) > 1:      # VLANs, bond members share a MAC: the same name decides
                found = [c for c in found if c["ifname"] == name] or found
        else:
            found = [c for c in current if c["ifname"] == name and c.get("link_type") == s.get("link_type")]
        if len(found) == 1:
            mapping[name] = found[0]["ifname"]
        else:
            key = f"MAC {_mac(s)}" if _mac(s) else f"name {name}"
            missing[name] = (f"no interface with {key}" if not found else
                             f"{len(found)} interfaces with {key}: {', '.join(c['ifname'] for c in found)}")
    return mapping, missing


def _addr_argv(a: dict, dev: str, old_dev: str) -> list[str]:
    argv = ["ip", "addr", "replace", f"{a['local']}/{a['prefixlen']}", "dev", dev]
    if a.get("broadcast"):
        argv += ["broadcast", a["broadcast"]]
    if a.get("scope"):
        argv += ["scope", a["scope"]]
    label = a.get("label", "")
    if label and label != old_dev and label.startswith(old_dev):
        argv += ["label", dev + label[len(old_dev):]]
    for flag in ("noprefixroute", "nodad"):
        if a.get(flag):
            argv.append(flag)
    if a.get("valid_life_time", 0xFFFFFFFF) < 0xFFFFFFFF:       # dynamic (DHCP): keep its lease time
        argv += ["valid_lft", str(a["valid_life_time"]), "preferred_lft", str(a.get("preferred_life_time", 0))]
    return argv


def _route_argv(r: dict, family: str, dev: str | None) -> list[str]:
    kind = r.get("type", "unicast")
    argv = ["ip", family, "route", "replace"] + ([kind] if kind != "unicast" else []) + [r["dst"]]
    if r.get("gateway"):
        argv += ["via", r["gateway"]]
    if dev:
        argv += ["dev", dev]
    for key, word in (("protocol", "proto"), ("scope", "scope"), ("prefsrc", "src"), ("metric", "metric")):
        if key in r and not (key == "protocol" and r[key] == "boot"):
            argv += [word, str(r[key])]
    if "onlink" in r.get("flags", []):
        argv.append("onlink")
    return argv


def _route_key(r: dict, dev: str | None) -> tuple:
    return (r.get("type", "unicast"), r["dst"], r.get("gateway", ""), dev or "", r.get("metric", 0))


def plan(saved: dict, current: dict) -> tuple[list[list[str]], list[str]]:
    """What to run (argv lists, in order: links, addresses, routes) to get from `current` back
    to `saved`, and the problems that no command can fix. Empty both = nothing differs."""
    mapping, missing = match_links(saved["links"], current["links"])
    now = {c["ifname"]: c for c in current["links"]}
    problems = [f"{name}: {why}" for name, why in missing.items()
                if _addresses(next(s for s in saved["links"] if s["ifname"] == name))]
    links, addrs, routes = [], [], []
    for s in saved["links"]:
        dev = mapping.get(s["ifname"])
        if dev is None:
            continue
        c = now[dev]
        if s.get("mtu") and s["mtu"] != c.get("mtu"):
            links.append(["ip", "link", "set", "dev", dev, "mtu", str(s["mtu"])])
        if "UP" in s.get("flags", []) and "UP" not in c.get("flags", []):
            links.append(["ip", "link", "set", "dev", dev, "up"])
        have = {(a.get("family"), a["local"], a.get("prefixlen")) for a in _addresses(c)}
        for a in _addresses(s):
            if (a.get("family"), a["local"], a.get("prefixlen")) not in have:
                addrs.append(_addr_argv(a, dev, s["ifname"]))
    for family, key in (("-4", "routes"), ("-6", "routes6")):
        have = {_route_key(r, r.get("dev")) for r in current.get(key, [])}
        wanted = []
        for r in saved.get(key, []):
            if r.get("protocol") == "kernel" or r.get("type", "unicast") not in ("unicast", *ROUTE_TYPES):
                continue            # the kernel recreates its own routes from the addresses
            dev = mapping.get(r["dev"]) if "dev" in r else None
            if "dev" in r and dev is None:
                problems.append(f"route {r['dst']}: its interface {r['dev']} has no match")
            elif _route_key(r, dev) not in have:
                wanted.append((bool(r.get("gateway")), r["dst"] == "default", _route_argv(r, family, dev)))
        routes += [argv for *_, argv in sorted(wanted, key=lambda w: (w[0], w[1]))]   # link routes first
    return links + addrs + routes, problems


# --- the points ---

def save(request: dict) -> dict:
    return {"state": capture()}


def _udev_done(link: dict, udev_db: Path = Path("/run/udev/data")) -> bool:
    """udev has processed (and, if it renames, renamed) this interface: renaming a link we
    already set up would fail, and the predictable name would be lost."""
    return link.get("link_type") == "loopback" or (udev_db / f"n{link.get('ifindex')}").exists()


def _wait_for_links(saved: dict) -> dict | None:
    """Give udev time to create and name the interfaces (restore runs early in boot). No
    wait when every saved interface is there already: `udevadm settle` alone took 5 s of
    the downtime under QEMU TCG. Returns what it captured when it did not wait (the restore
    plans from it: each `ip` takes ~0.1 s there, inside the pause)."""
    now = capture()
    mapping, missing = match_links(saved["links"], now["links"])
    needed = [n for n in missing if _addresses(next(s for s in saved["links"] if s["ifname"] == n))]
    if not needed and all(_udev_done(c) for c in now["links"] if c["ifname"] in mapping.values()):
        return now
    if shutil.which("udevadm"):
        run(["udevadm", "settle", "--timeout=10"], timeout=15, check=False)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if not match_links(saved["links"], _ip("addr", "show"))[1]:
            return None
        time.sleep(0.5)
    return None


def restore(request: dict) -> dict:
    saved = request["state"]
    if not saved:
        return {"applied": [], "note": "nothing was saved"}
    commands, problems = plan(saved, _wait_for_links(saved) or capture())
    applied = []
    for argv in commands:
        proc = run(argv, timeout=20, check=False)
        if proc.returncode == 0:
            applied.append(" ".join(argv))
        else:
            problems.append(f"`{' '.join(argv)}`: {proc.stderr.decode(errors='replace').strip()}")
    if problems:
        raise RuntimeError(f"{len(problems)} problem(s): " + "; ".join(problems))
    return {"applied": applied}


def verify(request: dict) -> dict:
    saved = request["state"]
    if not saved:
        return {}
    commands, problems = plan(saved, capture())
    if commands or problems:
        raise RuntimeError("differs from before the upgrade: "
                           + "; ".join(problems + [" ".join(a) + " (still needed)" for a in commands]))
    return {"compared": {"links": len(saved["links"]), "routes": len(saved.get("routes", [])) +
                         len(saved.get("routes6", []))}}
