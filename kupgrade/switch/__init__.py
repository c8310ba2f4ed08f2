"""What crosses the kernel switch, and the new kernel's side of it: the contract both kernels
agree on (contract.py), the snapshot's layout and manifest (packing.py, manifest.py), the two
transports (initrd.py: appended to the target's initrd; pmem.py: kupgrade's memory region), the
boot integration that receives it (boot.py, bootpids.py, ../data/), and the restore command
(restorecmd.py) with what it does (newkernel.py, prewarm.py, commit.py, switchback.py).

This package imports nothing itself: the new kernel's restore path loads only what it needs."""
