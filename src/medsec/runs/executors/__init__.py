"""The registered executors (``medsec ls executors``), one per file; the interface and the
worker side are in :mod:`medsec.runs.executor`."""
