"""One parser for model names: ``small_cnn``, ``timm:resnet18``, ``torchvision:resnet50``,
``open_clip:ViT-B-32``, ``hf:vinid/plip``, ``hf:CIDAS/clipseg-rd64-refined``.

A name is either a registered builder (``small_cnn``, ``monai_unet``, ``medclip``, ...) or
``<loader>:<architecture>``, short for the builder ``<loader>`` with the architecture as its
name parameter (``arch`` or ``model_id``, whichever the builder takes). The loaders are the
builders named after their library: ``timm``, ``torchvision`` and ``open_clip``; ``hf:``
(Hugging Face) picks ``clipseg`` for ids whose last part starts with ``clipseg`` and
``hf_clip`` otherwise. The same rule serves every registry whose builders follow it, e.g. the
tile encoders (``timm:hf-hub:MahmoodLab/UNI``, ``open_clip:ViT-B-32``).

Example:
    >>> resolve("timm:resnet18", {"num_classes": 8})
    ('timm', {'num_classes': 8, 'arch': 'resnet18'})
    >>> resolve("hf:vinid/plip")
    ('hf_clip', {'model_id': 'vinid/plip'})
    >>> resolve("small_cnn", {"width": 16})
    ('small_cnn', {'width': 16})
"""

from __future__ import annotations

import inspect
from typing import Any

from medsec.errors import ConfigError
from medsec.registry import MODELS, Registry, suggest

LOADERS = ("timm", "torchvision", "open_clip", "hf")
NAME_PARAMS = ("arch", "model_id")  # the parameter a loader builder takes the architecture name in


def loader_key(prefix: str, arch: str) -> str:
    """The builder a ``prefix:arch`` name routes to (before checking it is registered)."""
    if prefix == "hf":
        return "clipseg" if arch.lower().rstrip("/").split("/")[-1].startswith("clipseg") else "hf_clip"
    return prefix


def resolve(name: str, params: dict[str, Any] | None = None, *,
            registry: Registry[Any] = MODELS) -> tuple[str, dict[str, Any]]:
    """``(registry key, params)`` for a model name and its params (neither is modified).

    Args:
        name: a registered builder name or ``<loader>:<architecture>`` (see the module docstring).
        params: the builder's parameters, without the architecture of a ``<loader>:`` name.
        registry: where the builder is looked up (default the model registry; the WSI tile
            encoders pass ``ENCODERS``).

    Raises:
        ConfigError: a name that is not a non-empty string, an unknown loader prefix, an empty
            architecture, or the architecture given twice (in the name and in ``params``).
        RegistryError: an unknown builder name (with "did you mean").
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"the {registry.kind} name must be a non-empty string, got {name!r}")
    out = dict(params or {})
    if ":" not in name:
        registry.get(name)  # unknown names raise with suggestions
        return name, out
    prefix, arch = name.split(":", 1)
    loaders = [p for p in LOADERS if p in registry or (p == "hf" and {"hf_clip", "clipseg"} & set(registry))]
    if prefix not in loaders:
        raise ConfigError(f"unknown {registry.kind} loader {prefix!r} in {name!r}.{suggest(prefix, loaders)} "
                          f"Write <loader>:<architecture> with a loader of {', '.join(loaders) or '(none)'}, "
                          f"or a registered name ({', '.join(registry.list())}).")
    if not arch.strip():
        raise ConfigError(f"{name!r} names no architecture; write e.g. {prefix}:resnet18")
    key = loader_key(prefix, arch)
    factory = registry.get(key)
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # pragma: no cover - every builder is a Python function or class
        accepted = set(NAME_PARAMS)
    field = next((p for p in NAME_PARAMS if p in accepted), None)
    if field is None:  # pragma: no cover - a loader builder always takes one of them
        raise ConfigError(f"the {registry.kind} builder {key!r} takes no architecture name")
    if out.get(field) is not None:
        raise ConfigError(f"{name!r} names the architecture and params also set {field}={out[field]!r}; "
                          f"give it once: name: {key} with params.{field}, or name: {name} without it")
    out[field] = arch
    return key, out


__all__ = ["resolve", "loader_key", "LOADERS"]
