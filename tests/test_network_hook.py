"""The network hook's planning: saved `ip -j` JSON -> ip argv lists, interfaces matched by MAC."""

import copy
import json
from pathlib import Path

from kupgrade_hooks import network

FIX = Path(__file__).parent / "fixtures" / "network"
SAVED = json.loads((FIX / "saved.json").read_text())
BOOTED = json.loads((FIX / "booted.json").read_text())


def test_matching_by_mac_follows_a_rename():
    mapping, missing = network.match_links(SAVED["links"], BOOTED["links"])
    assert mapping["eth0"] == "ens3"
    assert mapping["lo"] == "lo"
    # ifb links get random MACs every boot: no match, but they had no addresses
    assert set(missing) == {"ifb0", "ifb1"}


def test_plan_after_boot_restores_links_addresses_routes_in_order():
    commands, problems = network.plan(SAVED, BOOTED)
    assert problems == []
    assert commands == [
        ["ip", "link", "set", "dev", "lo", "up"],
        ["ip", "link", "set", "dev", "ens3", "mtu", "1400"],
        ["ip", "link", "set", "dev", "ens3", "up"],
        ["ip", "addr", "replace", "127.0.0.1/8", "dev", "lo", "scope", "host"],
        ["ip", "addr", "replace", "::1/128", "dev", "lo", "scope", "host"],
        ["ip", "addr", "replace", "192.0.2.2/24", "dev", "ens3", "broadcast", "192.0.2.255", "scope", "global"],
        ["ip", "addr", "replace", "fd00::2/64", "dev", "ens3", "scope", "global", "nodad"],
        ["ip", "-4", "route", "replace", "default", "via", "192.0.2.1", "dev", "ens3"],
        ["ip", "-6", "route", "replace", "default", "via", "fd00::1", "dev", "ens3", "metric", "1024"],
    ]


def test_plan_is_empty_when_nothing_differs():
    assert network.plan(SAVED, SAVED) == ([], [])


def test_addresses_already_present_are_skipped():
    current = copy.deepcopy(BOOTED)
    ens3 = next(link for link in current["links"] if link["ifname"] == "ens3")
    ens3["addr_info"] = [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24, "scope": "global"}]
    commands, _ = network.plan(SAVED, current)
    assert not any("192.0.2.2/24" in argv for argv in commands)
    assert any("fd00::2/64" in argv for argv in commands)


def test_missing_interface_with_addresses_is_a_problem():
    current = copy.deepcopy(BOOTED)
    current["links"] = [link for link in current["links"] if link["ifname"] != "ens3"]
    commands, problems = network.plan(SAVED, current)
    assert any(p.startswith("eth0: no interface with MAC 02:fc:00:00:00:01") for p in problems)
    assert any("route default" in p for p in problems)
    assert not any("ens3" in argv for argv in commands)


def test_shared_mac_prefers_the_same_name():
    saved = [{"ifname": "eth0.5", "link_type": "ether", "address": "02:00:00:00:00:01"}]
    current = [{"ifname": "eth0", "link_type": "ether", "address": "02:00:00:00:00:01"},
               {"ifname": "eth0.5", "link_type": "ether", "address": "02:00:00:00:00:01"}]
    assert network.match_links(saved, current) == ({"eth0.5": "eth0.5"}, {})
    ambiguous, missing = network.match_links([{**saved[0], "ifname": "vlan5"}], current)
    assert ambiguous == {} and "2 interfaces" in missing["vlan5"]


def test_dynamic_address_keeps_its_lease_and_label_follows_the_rename():
    a = {"family": "inet", "local": "10.0.2.15", "prefixlen": 24, "broadcast": "10.0.2.255", "scope": "global",
         "dynamic": True, "label": "eth0:1", "valid_life_time": 86000, "preferred_life_time": 86000}
    assert network._addr_argv(a, "ens3", "eth0") == [
        "ip", "addr", "replace", "10.0.2.15/24", "dev", "ens3", "broadcast", "10.0.2.255", "scope", "global",
        "label", "ens3:1", "valid_lft", "86000", "preferred_lft", "86000"]


def test_kernel_routes_skipped_link_routes_before_gateways():
    saved = {"links": SAVED["links"], "routes6": [], "routes": [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "protocol": "dhcp", "metric": 100, "flags": []},
        {"dst": "198.51.100.0/24", "dev": "eth0", "scope": "link", "flags": []},
        {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "flags": []},
        {"type": "blackhole", "dst": "203.0.113.0/24", "flags": []}]}
    commands, problems = network.plan(saved, {**BOOTED, "links": SAVED["links"]})
    assert problems == []
    assert commands == [
        ["ip", "-4", "route", "replace", "198.51.100.0/24", "dev", "eth0", "scope", "link"],
        ["ip", "-4", "route", "replace", "blackhole", "203.0.113.0/24"],
        ["ip", "-4", "route", "replace", "default", "via", "192.0.2.1", "dev", "eth0", "proto", "dhcp",
         "metric", "100"]]


def test_describe_is_a_valid_declaration():
    from kupgrade.hooks import parse_spec
    spec = parse_spec(network.describe(), "network")
    assert spec.points == ("save", "restore", "verify") and spec.match == ({"subsystem": "net"},)


def test_udev_done(tmp_path):
    (tmp_path / "n2").write_text("")
    assert network._udev_done({"ifindex": 2, "ifname": "ens3"}, tmp_path)
    assert not network._udev_done({"ifindex": 3, "ifname": "eth0"}, tmp_path)      # rename may still come
    assert network._udev_done({"ifindex": 1, "ifname": "lo", "link_type": "loopback"}, tmp_path)


def test_capture_asks_ip_for_each_part(monkeypatch):
    asked = []

    def fake_ip(*args):
        asked.append(args)
        return [{"asked": " ".join(args)}]
    monkeypatch.setattr(network, "_ip", fake_ip)
    got = network.capture()
    assert got == {"links": [{"asked": "addr show"}], "routes": [{"asked": "-4 route show"}],
                   "routes6": [{"asked": "-6 route show"}]}
    assert sorted(asked) == sorted(network.CAPTURE.values())
