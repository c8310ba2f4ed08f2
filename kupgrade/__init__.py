"""kupgrade: replace the running kernel without losing the running programs."""

__version__ = "0.1.0"
