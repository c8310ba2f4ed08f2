"""kupgrade's built-in device hooks (installed as the package ``kupgrade_hooks``).

Each public module is one hook: a ``describe()`` returning its declaration and one function
per point it implements, taking the request dict and returning the reply dict (docs/hooks.md).
They are found by importing this package, not through entry points, so they also work when
the package is copied into dist-packages without metadata (Debian-style, the vm-tests guest).
"""
