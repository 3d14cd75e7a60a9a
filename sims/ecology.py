"""Deprecated: the stylised ecology moved to [`sims.ecologies.stylised`][] (it is one
implementation of [`sims.Ecology`][] now). This alias stays for one release."""

import warnings

from sims.ecologies.stylised import *  # noqa: F403
from sims.ecologies.stylised import __all__  # noqa: F401

warnings.warn(
    "sims.ecology moved to sims.ecologies.stylised; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
