"""Building a run's data and model from the config's ``data`` and ``model`` sections, for every
kind that uses them (evasion, segmentation, backdoor defence, ``medsec train``).

Example:
    >>> takes(lambda root, size=28: None, "size")
    True
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from medsec.errors import ConfigError, DataError
from medsec.models.names import resolve
from medsec.registry import DATASETS, MODELS
from medsec.tasks import TASKS


def takes(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a class or function) has a parameter called ``name``."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def load_splits(data: Any, seed: int) -> tuple[Any, Any, Any]:
    """(train, eval, val) datasets of a ``data`` section (a :class:`~medsec.config.schema.DataConfig`);
    val is None when not configured. A dataset that takes ``split`` is read per split; any other
    is split at random (seeded) by ``eval_fraction``."""
    import medsec.data  # noqa: F401  (registration)

    factory = DATASETS.get(data.name)
    params = dict(data.params)
    if takes(factory, "split"):
        if "split" in params:
            raise ConfigError("set data.train_split / data.eval_split instead of data.params.split")
        train = DATASETS.create(data.name, **params, split=data.train_split)
        ev = DATASETS.create(data.name, **params, split=data.eval_split)
        val = DATASETS.create(data.name, **params, split=data.val_split) if data.val_split else None
        return train, ev, val
    full = DATASETS.create(data.name, **params)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, int(round(data.eval_fraction * len(full))))
    if n_eval >= len(full):
        raise DataError(f"dataset {data.name!r} has only {len(full)} images, too few to split")
    return full.subset(perm[n_eval:]), full.subset(perm[:n_eval]), None


def build_model(model: Any, train_ds: Any, **defaults: Any) -> Any:
    """The model of a ``model`` section (a :class:`~medsec.config.schema.ModelConfig`): a medsec
    checkpoint, or a registered builder with the config's params, filled in from the training
    set (``num_classes``, ``in_channels``, ``task``, ``classes``) and ``defaults`` where the
    builder takes them and the config does not set them."""
    if model.checkpoint is not None:
        from medsec.models.checkpoint import load_checkpoint

        return load_checkpoint(model.checkpoint)
    import medsec.models  # noqa: F401  (registration)

    key, params = resolve(model.name, model.params)
    factory = MODELS.get(key)
    inferred = {"num_classes": getattr(train_ds, "num_classes", None), "in_channels": train_ds.image_shape[0],
                "task": task if (task := getattr(train_ds, "task", "multiclass")) in TASKS else None, "classes": list(getattr(train_ds, "classes", []))}
    for k, v in {**inferred, **defaults}.items():
        if v is not None and k not in params and takes(factory, k):
            params[k] = v
    return MODELS.create(key, **params)


def eval_subset(ds: Any, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of ``ds``, a seeded subset of ``limit`` of them when it holds more."""
    n = len(ds)
    if n == 0:
        raise DataError("the evaluation set is empty")
    if limit is not None and limit < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        return ds.images[idx], ds.labels[idx]
    return ds.images, ds.labels


__all__ = ["build_model", "eval_subset", "load_splits", "takes"]
