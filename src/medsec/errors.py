"""Exceptions that medsec raises for problems the user can fix.

Every user-facing problem (bad shapes, NaNs, unknown keys, missing files) raises a
subclass of :class:`MedsecError` whose message names the problem and the fix. The CLI
prints such messages as one line and exits non-zero.
"""

from __future__ import annotations


class MedsecError(Exception):
    """Base class of errors caused by input, configuration or environment."""


class InputError(MedsecError, ValueError):
    """An image, label or tensor argument is malformed (shape, dtype, range, NaN)."""


class ConfigError(MedsecError, ValueError):
    """A configuration file or parameter is invalid."""


class RegistryError(ConfigError, KeyError):
    """A name is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(MedsecError):
    """A dataset is missing, empty or unreadable."""
