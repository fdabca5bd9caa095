from medsec.attacks import uap, uap_sgd  # noqa: F401
