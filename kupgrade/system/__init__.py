"""The programs and kernel interfaces kupgrade drives: the one wrapper for external commands
(run.py), criu and kexec command lines, /proc readers, file system freezing, OOM protection.

This package imports nothing itself: the new kernel's restore path loads only what it needs."""
