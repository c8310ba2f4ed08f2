import logging

from kupgrade.output import logfile
from kupgrade.system.run import run


def test_log_file_has_every_command(tmp_path):
    path = logfile.start("ID1", tmp_path / "log")
    try:
        run(["sh", "-c", "echo out; echo err >&2"])
        run(["false"], check=False)
    finally:
        for h in list(logging.getLogger("kupgrade").handlers):
            if getattr(h, "baseFilename", None) == str(path):
                h.close()
                logging.getLogger("kupgrade").removeHandler(h)
    text = path.read_text()
    assert "ran: sh -c echo out; echo err >&2 -> rc=0" in text
    assert "stdout of sh:\nout" in text and "stderr of sh:\nerr" in text
    assert "ran: false -> rc=1" in text
    assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0


def test_unwritable_log_dir_is_not_fatal(tmp_path):
    (tmp_path / "file").write_text("")
    assert logfile.start("ID2", tmp_path / "file" / "log") is None
