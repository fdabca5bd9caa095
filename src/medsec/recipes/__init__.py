"""medsec's own training recipes and the checkpoints of them that ship with the package.

A recipe is a fixed training configuration (data, architecture, schedule, seed, thread count)
that trains one of the small models the tests, benchmarks and docs measure: the BloodMNIST
CNNs (clean, PGD-AT, TRADES, 64 px, BadNets-poisoned), the Kvasir-SEG U-Net and the CLIP
models (:mod:`medsec.recipes.builtin`, :mod:`medsec.recipes.clip`). Their trained files ship
in ``checkpoints/`` (:mod:`medsec.recipes.shipped`); ``medsec ls recipes`` lists them and
``python -m medsec.zoo`` retrains them.

This package sits above the units it trains with (models, training, backdoors) and below the
experiment kinds; a recipe that runs a whole kind (BadMatch's) lives in its kind's folder.
"""
