# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The options every module that runs kupgrade on the host shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  config:
    description: kupgrade's configuration file on the host (C(--config)).
    type: path
  executable:
    description: The kupgrade command on the host.
    type: str
    default: kupgrade
"""

    # kupgrade's selection on the command line (check, run)
    SELECTION = r"""
options:
  args:
    description: kupgrade's selection arguments (C(--unit), C(--cgroup), C(--pid),
      C(--all-services), C(--kernel)); none means what the host's /etc/kupgrade/kupgrade.toml says.
    type: list
    elements: str
    default: []
"""
