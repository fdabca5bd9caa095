"""medsec: security testing of medical-imaging AI.

Example:
    >>> import medsec
    >>> attack = medsec.attacks.create("pgd", steps=10)
    >>> threat = medsec.ThreatModel("linf", 8 / 255)
"""

from __future__ import annotations

from medsec import attacks, data, defenses, metrics, models, objectives
from medsec.errors import ConfigError, DataError, InputError, MedsecError, RegistryError
from medsec.types import AttackResult, InputSpec, ThreatModel
from medsec.version import __version__

__all__ = [
    "attacks", "data", "defenses", "metrics", "models", "objectives", "ThreatModel", "InputSpec", "AttackResult",
    "MedsecError", "InputError", "ConfigError", "DataError", "RegistryError", "__version__",
]
