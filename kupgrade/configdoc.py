"""docs/config.md, generated from the settings table (`python -m kupgrade.config > docs/config.md`;
a test keeps the file in step)."""

from __future__ import annotations

from kupgrade.config import DEFAULT_PATH, SETTINGS, Config, _type_name


def docs_markdown() -> str:
    """The whole of docs/config.md."""
    out = ["# kupgrade configuration", "",
           f"kupgrade reads `{DEFAULT_PATH}` (or the file given with `--config PATH`). "
           "Unknown keys, wrong types and impossible values are errors naming the key and the file.", ""]
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            out += [f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        default = getattr(Config(), s.attr)
        default = list(default) if isinstance(default, tuple) else default
        out.append(f"| `{s.key}` | {_type_name(s.type, s.item)} | `{default!r}` | {s.doc} e.g. `{s.key} = {s.example}` |")
        nxt = SETTINGS.index(s) + 1
        if nxt == len(SETTINGS) or SETTINGS[nxt].section != section:
            out.append("")
    return "\n".join(out)

