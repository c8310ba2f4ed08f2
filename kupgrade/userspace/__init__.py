"""The running programs: which are carried (workloads.py, selection.py, systemd.py) and what of
them a snapshot carries or cannot carry (carry.py, sandbox.py, mountns.py, volatile.py, tcp.py,
tcpfix.py, unixsk.py, stepout.py).

This package imports nothing itself: the new kernel's restore path loads only what it needs."""
