"""A real terminal inside the guest: a tmux session running one command, driven like an admin
would (read the screen, type an answer), captured as text for assertions and artifacts."""

from __future__ import annotations

import re
import shlex
import time

from .qemu import Guest

ENV = ["env", "LANG=C.UTF-8", "TERM=xterm-256color"]
EXITED = re.compile(r"\[command exited with (\d+)\]")


class ScreenTimeout(AssertionError):
    pass


class Terminal:
    def __init__(self, vm: Guest, name: str, width: int = 120, height: int = 50) -> None:
        self.vm, self.name, self.width, self.height = vm, name, width, height

    def start(self, *argv: str) -> None:
        """Run argv in a new detached session; the pane stays with the exit status line."""
        cmd = f"{shlex.join(argv)}; echo \"[command exited with $?]\"; exec sleep 1d"
        self.vm.sh(*ENV, "tmux", "new-session", "-d", "-s", self.name, "-x", str(self.width),
                   "-y", str(self.height), "sh", "-c", cmd)

    def screen(self, history: int = 0) -> str:
        """The visible screen (plus `history` lines of scrollback), as text. The agent's serial
        line is slow: poll the visible screen, fetch the scrollback only for artifacts."""
        extra = ["-S", f"-{history}"] if history else []
        return self.vm.sh("tmux", "capture-pane", "-p", "-J", "-t", self.name, *extra)["stdout"]

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """Poll the screen until pattern (a regex) shows after the last answer; return the screen."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if rx.search(text):
                return text
            if (m := EXITED.search(text)) and not rx.search(text):
                raise ScreenTimeout(f"the command exited ({m.group(1)}) before showing {pattern!r}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise ScreenTimeout(f"{pattern!r} not on the screen after {timeout:.0f} s:\n{text[-3000:]}")
            time.sleep(0.3)     # polling the screen, not waiting for time to pass

    def type(self, *keys: str) -> None:
        self.vm.sh("tmux", "send-keys", "-t", self.name, *keys)

    def answer(self, prompt: str, key: str, timeout: float = 300) -> str:
        """Wait for a prompt, return the screen as it was, then type key + Enter."""
        text = self.wait_for(prompt, timeout)
        self.type(key, "Enter")
        return text
