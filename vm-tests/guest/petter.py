#!/usr/bin/python3
"""A watchdog petting daemon for the vm-tests, doing what watchdog(8) or systemd's
RuntimeWatchdogSec do: open DEVICE, set its timeout, ping it every INTERVAL seconds.

    petter.py DEVICE TIMEOUT INTERVAL LOG

Each ping writes `vmtest-petter: pet N PID TIMEOUT` to LOG, TIMEOUT as the driver reports it at
that moment (a hook may change it under the daemon). LOG /dev/kmsg puts it on the console, where
the host timestamps it in both boots. SIGTERM is a clean stop: the magic close ('V') disarms
the watchdog. SIGKILL is a crash: the device stays armed and fires after TIMEOUT seconds.
The device may not exist yet early in a boot (its driver loads later): wait for it."""
import fcntl
import os
import signal
import struct
import sys
import time

WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


def ioctl_int(fd: int, request: int, value: int = 0) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, request, struct.pack("i", value)))[0]


def main(device: str, timeout: int, interval: float, log: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(device):
        if time.monotonic() > deadline:
            sys.exit(f"petter: {device} did not appear within 120 s")
        time.sleep(0.5)
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    ioctl_int(fd, WDIOC_SETTIMEOUT, timeout)

    def stop(*_):
        os.write(fd, b"V")
        os.close(fd)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    prefix = b"<5>" if log == "/dev/kmsg" else b""      # kernel log level notice: shown on the console
    n = 0
    while True:
        n += 1
        ioctl_int(fd, WDIOC_KEEPALIVE)
        os.write(out, prefix + b"vmtest-petter: pet %d %d %d\n" % (n, os.getpid(), ioctl_int(fd, WDIOC_GETTIMEOUT)))
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
