"""Named parameter presets: ``--params NAME`` for a packaged params TOML.

``tuned`` (``tuned.toml`` here) is the tuned params of the worked example of
``docs/tuning.md`` (section 7), with its evaluation table there. The hand-set
``NarsetParams()`` stay the defaults: a preset is used only when named.

A preset name always means the preset; to read a params file literally named ``tuned``
in the working directory, pass ``./tuned``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRESETS", "PRESET_DIR", "params_file"]

PRESET_DIR = Path(__file__).resolve().parent
"""Where the presets' TOML files are shipped."""

PRESETS: dict[str, str] = {"tuned": "tuned.toml"}
"""Preset name -> its file in ``PRESET_DIR``."""


def params_file(value: str | os.PathLike | None) -> str | None:
    """The params file a ``--params`` value names: a preset's packaged TOML for a preset
    name (one of ``PRESETS``), else ``value`` unchanged (a path; ``None`` for none)."""
    if value is None:
        return None
    text = os.fspath(value)
    if text in PRESETS:
        return str(PRESET_DIR / PRESETS[text])
    return text
