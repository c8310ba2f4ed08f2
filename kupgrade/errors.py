"""One error type per failure source; the CLI maps each to an exit code and one line.

Every error carries a message (what is wrong) and a hint (what to do). The top-level
handler in cli.py prints ``kupgrade: <message>`` and ``hint: <hint>``; tracebacks only
with --debug.
"""

from __future__ import annotations


class KupgradeError(Exception):
    """Base class: a failure kupgrade understands and can explain."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict = dict(details or {})   # what the failed stage records with it

    def with_details(self, details: dict) -> "KupgradeError":
        """This error with more details (these win over its own): a new one, built by its
        constructor; raise it `from` this one. An error is never changed once it exists."""
        return self._rebuild({**self.details, **details})

    def in_stage(self, details: dict) -> "KupgradeError":
        """This error with the details of the stage it failed (its own keys win): a new one."""
        return self._rebuild({**details, **self.details})

    def _rebuild(self, details: dict) -> "KupgradeError":
        """The same error with these details; a subclass whose constructor takes more overrides it."""
        return type(self)(self.message, self.hint, details=details)

    def __str__(self) -> str:
        return self.message


def explain(e: KupgradeError) -> str:
    """What the top-level handlers print: one line saying what is wrong, one saying what to do."""
    return f"kupgrade: {e.message}" + (f"\nhint: {e.hint}" if e.hint else "")


class ConfigError(KupgradeError):
    """The configuration file, a command-line value or another input file (an upgrade record) is
    wrong, or this machine lacks what the command needs set up (`install-boot`: no initrd builder,
    no busybox)."""

    exit_code = 2


class BlockedError(KupgradeError):
    """Preflight found blockers: nothing was changed."""

    exit_code = 3

    def __init__(self, blockers: list, hint: str = "", *, details: dict | None = None) -> None:
        self.blockers = blockers
        first = blockers[0].message if blockers else "none"
        more = f" (+{len(blockers) - 1} more, listed above)" if len(blockers) > 1 else ""
        super().__init__(f"blocked: {first}{more}",
                         hint or (blockers[0].hint if len(blockers) == 1 and blockers[0].hint else
                                  "fix the blockers listed above, then run `kupgrade check` again"),
                         details=details)

    def _rebuild(self, details: dict) -> "BlockedError":
        return BlockedError(self.blockers, self.hint, details=details)


class CommandError(KupgradeError):
    """An external command failed (non-zero exit, timeout or missing binary)."""

    exit_code = 4

    def __init__(self, argv: list[str], returncode: int | None, stderr_tail: str, hint: str = "", *,
                 details: dict | None = None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        what = "not found" if returncode is None and not stderr_tail else (
            "timed out" if returncode is None else f"exited {returncode}")
        tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
        msg = f"`{argv[0]}` {what}" + (f": {tail}" if tail else "")
        super().__init__(msg, hint, details=details)

    def _rebuild(self, details: dict) -> "CommandError":
        return CommandError(self.argv, self.returncode, self.stderr_tail, self.hint, details=details)


class StageError(KupgradeError):
    """A stage could not do its work (the message says which and why)."""

    exit_code = 5


class RestoreError(KupgradeError):
    """The new-kernel side could not restore a workload; its snapshot is kept."""

    exit_code = 6


class HookError(KupgradeError):
    """A device hook failed. Before the point of no return (preflight, quiesce, save) the caller
    rolls back and nothing has changed for the workloads; after it (early-restore, restore,
    verify) only a hook marked critical raises this, once every other hook has run."""

    exit_code = 7

    def __init__(self, message: str, hint: str = "", results: list | None = None, *,
                 details: dict | None = None) -> None:
        super().__init__(message, hint, details=details)
        self.results = list(results or [])     # the HookResults of that point, the failed one(s) included

    def _rebuild(self, details: dict) -> "HookError":
        return HookError(self.message, self.hint, self.results, details=details)
