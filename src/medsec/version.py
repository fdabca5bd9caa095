"""The version of medsec (one place; ``medsec.__version__`` and the results' provenance read it)."""

__version__ = "0.1.0"
