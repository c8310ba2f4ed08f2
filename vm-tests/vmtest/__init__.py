"""Host side of kupgrade's QEMU tests: image builder, launcher, scenarios."""
