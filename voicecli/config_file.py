"""Writing voicecli.toml: the file-only settings `config set` keeps there, readable and private.

Everything else `config set` changes goes to the store (live on every server); values an
earlier voicecli wrote here keep applying, under the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from voicecli.runtime import write_private
from voicecli.settings import SETTINGS, read_config_file, validate_value

HEADER = (
    "# Read at start-up; safe to edit by hand. `voicecli config set` writes the file-only settings here\n"
    "# (database_url, workers, *_api_base) and the rest to the store, which wins over this file.\n"
)


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
