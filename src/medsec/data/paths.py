"""Where medsec looks for local data: one setting, ``MEDSEC_DATA``.

Real datasets are never committed to the project (GUIDE section 5). They live in one
folder, ``$MEDSEC_DATA``, which defaults to ``../shared/data`` relative to the current
working directory (the layout of the project checkout). Each dataset is a sub-folder,
e.g. ``$MEDSEC_DATA/bloodmnist/bloodmnist.npz``. Tests and benchmarks that need it skip
with a clear reason where it is absent.

Reference: the MedMNIST file layout (Yang et al., "MedMNIST v2", Scientific Data 2023).

Example:
    >>> from medsec.data import data_root
    >>> (data_root() / "bloodmnist").name
    'bloodmnist'
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MEDSEC_DATA"
DEFAULT = "../shared/data"


def data_root() -> Path:
    """The local data folder: ``$MEDSEC_DATA``, else ``../shared/data`` (absolute path).

    The folder may not exist; callers check and raise :class:`~medsec.errors.DataError`
    with a fix.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"MEDSEC_DATA": "/tmp/medsec-data"}):
        ...     str(data_root())
        '/tmp/medsec-data'
    """
    value = os.environ.get(ENV_VAR, "").strip() or DEFAULT
    return Path(os.path.abspath(os.path.expanduser(value)))
