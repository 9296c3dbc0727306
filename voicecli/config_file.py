"""Writing voicecli.toml: what the user set through voicecli, kept readable and private."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from voicecli.settings import SETTINGS, read_config_file, validate_value
from voicecli.state import write_private

HEADER = "# Set through `voicecli config set` or the settings API; safe to edit by hand.\n"


def update_config_file(path: Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply validated changes (None removes a key) and write the file atomically, mode 0600."""
    data = read_config_file(path)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = validate_value(name, value)
    ordered = {s.name: data[s.name] for s in SETTINGS if s.name in data}
    # 0600 always: the file may hold auth tokens, and a later `set` may add one.
    write_private(path, HEADER + tomli_w.dumps(ordered))
    return ordered
