"""The upgrade record (record.py) and everything read from it: human output and progress, the
log, metrics, the timeline and the downtime estimate.

This package imports nothing itself: the new kernel's restore path loads only what it needs."""
