"""Load, override and validate experiment configs.

* YAML is read with ``yaml.safe_load``; a missing file or bad YAML is a ConfigError.
* ``--set key.path=value`` overrides are applied before validation (``value`` is read
  as YAML, so ``--set eval.sample_limit=200`` gives an int).
* Pydantic errors become one readable line; an unknown key names the nearest valid key.
* The config's ``kind`` (default ``evasion``) picks its schema from the ``KINDS`` registry,
  and the kind's ``check`` refuses unknown registry names and bad params before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from medsec.errors import ConfigError
from medsec.registry import check_params, suggest


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping at the top level")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides to a raw config dict (returns a new dict)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set has an empty key in {item!r}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot read value {value!r}") from exc
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = parsed
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = parsed
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])!r} is not a mapping or list")
    return out


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class found by walking ``loc`` from ``root``."""
    cls: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        ann = cls.model_fields[part].annotation
        cls = _unwrap(ann)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    while get_origin(ann) is not None:
        args = [a for a in get_args(ann) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        ann = models[0] if models else (args[0] if args else ann)
        if isinstance(ann, type):
            break
    return ann


def _format(err: ValidationError, root: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = tuple(e.get("loc", ()))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if e.get("type") == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
        key = str(loc[-1])
        valid = list(parent.model_fields) if parent is not None else []
        inside = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return f"unknown key {key!r} in {inside}.{suggest(key, valid)} Valid keys: {', '.join(valid)}."
    if e.get("type") == "missing":
        return f"missing required key {where!r}"
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{where}: {msg}{more}"


def validate_config(raw: dict[str, Any]) -> Any:
    """Validate a raw dict into the config of its ``kind`` (default ``evasion``), then let the
    kind check its components (registry names and params) before any work."""
    from medsec.registry import KINDS

    kind_name = raw.get("kind", "evasion")
    if not isinstance(kind_name, str):
        raise ConfigError(f"kind must be a string naming an experiment kind, got {kind_name!r}")
    if kind_name not in KINDS:
        names = KINDS.list()
        raise ConfigError(f"unknown experiment kind {kind_name!r}.{suggest(kind_name, names)} "
                          f"Known kinds: {', '.join(names)}.")
    kind: Any = KINDS.get(kind_name)  # a medsec.runs.kind.Kind
    try:
        cfg = kind.config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, kind.config)) from None
    if kind.check is not None:
        kind.check(cfg)
    return cfg


def check_component(registry: Any, name: str, params: dict[str, Any], where: str) -> Any:
    """The factory of ``name`` in ``registry``; a ConfigError naming ``where`` when the name is
    unknown or ``params`` holds a key the factory does not take."""
    factory = registry.get(name)
    check_params(factory, params, f"{where} ({name})")
    return factory


def check_model(model: Any, where: str = "model") -> None:
    """Check a ``model`` section's name and params (a checkpoint is checked when loaded)."""
    import medsec.models  # noqa: F401  (registration)
    from medsec.registry import MODELS

    if model.checkpoint is None:
        from medsec.models.names import resolve

        key, params = resolve(model.name, model.params)
        check_component(MODELS, key, params, where)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Read, override and validate an experiment YAML."""
    return validate_config(apply_overrides(read_yaml(path), overrides))


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML."""
    return str(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
