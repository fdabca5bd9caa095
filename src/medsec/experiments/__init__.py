"""Experiment kinds: one folder per kind (``config.py``, ``run.py``, ``report.py``), each
exposing ``KIND`` (:class:`medsec.runs.kind.Kind`) and listed in the ``KINDS`` registry
(:mod:`medsec.registry`): evasion, segmentation, backdoor_defense, prompt_backdoor, badmatch,
wsi. ``medsec run``, ``validate`` and ``report`` find a kind there and nowhere else; the
services a kind runs on (context, store, grid, executors) are in :mod:`medsec.runs`.
"""
