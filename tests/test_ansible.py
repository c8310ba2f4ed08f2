"""The collection as Ansible sees it: built and installed with ansible-galaxy, its documentation
parsed, the playbook run on the controller itself against fake `kupgrade` commands (no root, no
guests): a blocked host skipped, a host already on the target done, a host the run action refuses
(a local connection would replace the controller's kernel) failing the batch, so that the rollout
stops and the fleet report lists the host never reached."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OLD, NEW = "6.1.0-47-amd64", "6.12.117+deb12-amd64"


def fake_kupgrade(path: Path, kernel_from: str, blockers: list[str], rc: int) -> str:
    """A `kupgrade` that answers `check --json` with these blockers (and writes --prometheus FILE)."""
    doc = {"id": "20260101T000000-abcdef", "command": "check", "kernel_from": kernel_from, "kernel_to": NEW,
           "outcome": "aborted" if blockers else "checked",
           "stages": [{"name": "preflight", "status": "failed" if blockers else "ok",
                       "details": {"blockers": [{"message": b, "hint": "fix it"} for b in blockers]}}]}
    path.write_text("#!/bin/sh\n[ \"$1\" = check ] || exit 1\n"
                    "for a; do [ \"$prev\" = --prometheus ] && echo kupgrade_upgradable > \"$a\"; prev=$a; done\n"
                    f"cat <<'EOF'\n{json.dumps(doc)}\nEOF\nexit {rc}\n")
    path.chmod(0o755)
    return str(path)


def ansible(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACKS_ENABLED": "kupgrade.fleet.fleet_report", "HOME": str(tmp_path),
           "KUPGRADE_FLEET_REPORT": str(tmp_path / "fleet.json"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def installed(tmp_path: Path) -> None:
    """Built into a tarball and installed from it, as a release would be."""
    r = ansible(tmp_path, "ansible-galaxy", "collection", "build", str(REPO / "ansible"),
                "--output-path", str(tmp_path))
    assert r.returncode == 0, r.stderr
    tarball = next(tmp_path.glob("kupgrade-fleet-*.tar.gz"))
    r = ansible(tmp_path, "ansible-galaxy", "collection", "install", str(tarball), "-p", str(tmp_path / "collections"))
    assert r.returncode == 0, r.stderr


def test_collection_builds_installs_and_documents_itself(tmp_path):
    installed(tmp_path)
    for kind, name in (("module", "check"), ("module", "run"), ("module", "report"), ("module", "health"),
                       ("callback", "fleet_report"), ("role", "upgrade")):
        r = ansible(tmp_path, "ansible-doc", "-t", kind, f"kupgrade.fleet.{name}")
        assert r.returncode == 0 and "ERROR" not in r.stderr, (name, r.stderr)
    (tmp_path / "hosts.ini").write_text("[kupgrade]\na\n")
    r = ansible(tmp_path, "ansible-playbook", "-i", "hosts.ini", "--syntax-check", "kupgrade.fleet.upgrade")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rollout_stops_at_a_failed_batch_and_reports_every_host(tmp_path):
    installed(tmp_path)
    hosts = {"blocked": fake_kupgrade(tmp_path / "k-blocked", OLD, ["job.service is a transient unit"], 3),
             "current": fake_kupgrade(tmp_path / "k-current", NEW, [f"target kernel {NEW} is the running kernel"], 3),
             "local": fake_kupgrade(tmp_path / "k-ready", OLD, [], 0),
             "later": fake_kupgrade(tmp_path / "k-later", OLD, [], 0)}
    (tmp_path / "hosts.ini").write_text(
        "[kupgrade]\n" + "".join(f"{h} kupgrade_executable={k}\n" for h, k in hosts.items()) +
        f"[kupgrade:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
        f"kupgrade_textfile_dir={tmp_path}/prom/{{{{ inventory_hostname }}}}\n")
    r = ansible(tmp_path, "ansible-playbook", "-i", "hosts.ini", "kupgrade.fleet.upgrade")
    assert r.returncode == 2, r.stdout + r.stderr                 # a host failed: the play stopped
    doc = json.loads((tmp_path / "fleet.json").read_text())
    rows = {e["host"]: e for e in doc["hosts"]}
    assert [e["host"] for e in doc["hosts"]] == list(hosts)
    assert [rows[h]["status"] for h in hosts] == ["blocked", "current", "failed", "not reached"]
    assert rows["blocked"]["reason"] == "job.service is a transient unit"
    assert "would replace the controller's own kernel" in rows["local"]["reason"]
    assert doc["counts"] == {"current": 1, "blocked": 1, "failed": 1, "not reached": 1}
    assert "KUPGRADE FLEET REPORT" in r.stdout
    assert "4 host(s): 1 current, 1 blocked, 1 failed, 1 not reached" in r.stdout
    assert (tmp_path / "fleet.txt").read_text().startswith("HOST")
    assert (tmp_path / "prom" / "blocked" / "kupgrade-check.prom").exists()         # the check's metrics

    # the admin's other choice: a blocked host fails, and with serial 1 the rollout stops there
    r = ansible(tmp_path, "ansible-playbook", "-i", "hosts.ini", "kupgrade.fleet.upgrade", "-e",
                "kupgrade_on_blocked=fail")
    assert r.returncode == 2, r.stdout + r.stderr
    doc = json.loads((tmp_path / "fleet.json").read_text())
    assert [e["status"] for e in doc["hosts"]] == ["blocked", "not reached", "not reached", "not reached"]
    assert "kupgrade check found blockers: job.service is a transient unit" in r.stdout
