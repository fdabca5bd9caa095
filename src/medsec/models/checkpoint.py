"""One checkpoint format for every model medsec builds: safetensors weights plus one metadata
layout, written by :func:`save_checkpoint` and read by :func:`load_checkpoint`.

Families: classifiers (:class:`~medsec.models.classifier.Classifier`), segmenters
(:class:`~medsec.models.segmenter.Segmenter`), CLIP-style models
(:class:`~medsec.models.clip.ClipModel`), MedCLIP-style models
(:class:`~medsec.models.medclip.MedCLIP`) and MIL heads
(:class:`~medsec.models.mil.base.MILHead`).

The file is a safetensors file (Hugging Face's format: a JSON header and raw tensors, no
code; https://huggingface.co/docs/safetensors) whose weights are the model's own
``state_dict()`` and whose header metadata holds one key, ``"medsec"``, a JSON object::

    {"format": "medsec.checkpoint", "version": 2,
     "family": "classifier" | "segmenter" | "clip" | "medclip" | "mil_head",
     "arch": {"name": <registered builder>, "params": {...}},   # rebuilds the model
     "spec": <InputSpec.to_dict()> | null,                      # the input contract
     "attributes": {...},        # what the builder does not set (class names, task, prompt)
     "zero_rows": {key: [rows, cols]},                          # see pack_zero_rows
     "extra": {...}}             # the caller's record (recipe, metrics, ...)

Any 2-D float tensor whose rows are mostly exactly zero (e.g. the token table of a small CLIP
trimmed to its caption tokens) is stored as its non-zero rows and their ids
(:func:`pack_zero_rows`); loading restores it bit for bit.

A checkpoint is data. Loading rebuilds only a known local architecture: ``arch.name`` must be
one of the builders of its family (:data:`FAMILIES`), and the params must not ask for anything
to be fetched or opened: pretrained weights (any truthy ``*pretrained*`` key, or a builder whose
default is to download them), hub ids (``hf-hub:...``, ``org/name``), URLs, file paths, caches.
Such a file raises :class:`~medsec.errors.DataError` naming the file and the field; to use its
weights, build the model yourself and call :func:`load_weights`. Weights are read with
safetensors only (``.pt`` state dicts through :func:`load_state_dict`, ``weights_only=True``).

Earlier formats stay readable: the classifier/segmenter files (metadata key ``"medsec"``
without ``format``), the CLIP files (key ``"medsec_clip"``) and the MedCLIP files (keys
``format: medsec-medclip``, ``arch``, ``tokenizer``, ``extra``); MIL heads were saved as bare
state dicts, which :func:`load_weights` loads into a head built with
:func:`~medsec.models.mil.create_head`.

Example:
    >>> import tempfile, medsec.models
    >>> clf = medsec.models.create("small_cnn", num_classes=8)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(clf, Path(tmp) / "model.safetensors")
    ...     clf2 = load_checkpoint(path)
    >>> type(clf2).__name__, clf2.num_classes
    ('Classifier', 8)
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medsec.errors import DataError, MedsecError
from medsec.io import atomic_write_bytes
from medsec.registry import MIL_HEADS, MODELS
from medsec.types import InputSpec

if TYPE_CHECKING:
    from medsec.models.medclip import MedCLIP

log = logging.getLogger(__name__)

META_KEY = "medsec"
FORMAT = "medsec.checkpoint"
VERSION = 2
# The builders a checkpoint of each family may name (an allow-list: anything else is refused).
FAMILIES: dict[str, tuple[str, ...]] = {
    "classifier": ("small_cnn", "timm", "torchvision"),
    "segmenter": ("monai_unet", "clipseg"),
    "clip": ("open_clip", "hf_clip"),
    "medclip": ("medclip",),
    "mil_head": ("abmil", "transmil", "mean", "max"),
}
# Params that name something to fetch or open; a checkpoint's arch may not set them.
REMOTE_KEYS = frozenset({"model_id", "text_model_id", "checkpoint_path", "cache_dir", "pretrained_cfg",
                         "pretrained_cfg_overlay", "hf_tokenizer_name", "url", "path", "file", "root"})
# Params that are free text (not names of anything), exempt from the hub/URL/path test.
FREE_TEXT_KEYS = frozenset({"tokenizer_json", "prompt"})
# Builder params that are ignored when nothing pretrained is loaded (dropped from a stored arch).
UNUSED_OFFLINE = {"clipseg": ("model_id",), "medclip": ("text_model_id",)}
REMOTE_PREFIXES = ("hf-hub:", "hf_hub:", "hf:", "http:", "https:", "file:", "s3:", "gs:", "ftp:")
# Where earlier formats kept the weights, relative to the model that the family builds.
LEGACY_PREFIX = {"medsec-v1": "net.", "medsec_clip-v1": "model.", "medsec-medclip-v1": ""}


# ---------------------------------------------------------------------------------- zero rows
def pack_zero_rows(state: dict[str, torch.Tensor], min_fraction: float = 0.5) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Store each 2-D tensor whose rows are at least ``min_fraction`` exactly zero as its non-zero
    rows (``key`` becomes ``key.rows`` values and ``key.row_ids`` int64 ids); returns the state and
    ``{key: full shape}`` for :func:`unpack_zero_rows`. Lossless."""
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in state.items():
        if value.dim() == 2 and value.is_floating_point() and value.shape[0] > 1:
            nonzero = value.ne(0).any(dim=1)
            if float((~nonzero).float().mean()) >= min_fraction:
                ids = nonzero.nonzero()[:, 0]
                out[f"{key}.row_ids"] = ids.to(torch.int64).contiguous()
                out[f"{key}.rows"] = value[ids].contiguous()
                shapes[key] = list(value.shape)
                continue
        out[key] = value
    return out, shapes


def unpack_zero_rows(state: dict[str, torch.Tensor], shapes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`pack_zero_rows`."""
    out = dict(state)
    for key, shape in shapes.items():
        try:
            ids, rows = out.pop(f"{key}.row_ids"), out.pop(f"{key}.rows")
        except KeyError as exc:
            raise DataError(f"checkpoint lists {key!r} as stored by rows but lacks {exc.args[0]!r}") from None
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)) \
                or rows.dim() != 2 or rows.shape[1] != shape[1] or ids.shape != rows.shape[:1] \
                or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= shape[0])):
            raise DataError(f"checkpoint entry {key!r}: row ids or rows do not fit the stored shape {shape}")
        full = torch.zeros(shape, dtype=rows.dtype)
        full[ids] = rows
        out[key] = full
    return out


# ---------------------------------------------------------------------------------- families
def family_of(model: nn.Module) -> str:
    """The checkpoint family of a model (``classifier``, ``segmenter``, ``clip``, ``medclip``, ``mil_head``)."""
    from medsec.models.classifier import Classifier
    from medsec.models.clip import ClipModel
    from medsec.models.medclip import MedCLIP
    from medsec.models.mil.base import MILHead
    from medsec.models.segmenter import Segmenter

    for family, cls in (("classifier", Classifier), ("segmenter", Segmenter), ("clip", ClipModel),
                        ("medclip", MedCLIP), ("mil_head", MILHead)):
        if isinstance(model, cls):
            return family
    raise DataError(f"cannot checkpoint a {type(model).__name__}: medsec checkpoints hold a Classifier, Segmenter, "
                    "ClipModel, MedCLIP or MIL head built through medsec.models (save other modules' state_dict with "
                    "safetensors.torch.save_file)")


def _local_arch(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "params"}`` with the params a builder ignores offline dropped (a hub id that
    is not used when ``pretrained`` is false)."""
    params = copy.deepcopy(dict(params))
    if not params.get("pretrained"):
        for key in UNUSED_OFFLINE.get(name, ()):
            params.pop(key, None)
    return {"name": name, "params": params}


def _medclip_arch(model: MedCLIP) -> dict[str, Any]:
    """The local ``{"name": "medclip", "params"}`` of a MedCLIP model: its builder arguments with
    the tokenizer inlined (``tokenizer_json``) and, for hub towers, the BERT config spelt out, so
    it is rebuilt without the hub."""
    params = dict(model.arch)
    if params.pop("pretrained", False):
        keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                "position_embedding_type")
        cfg = model.text.bert.config.to_dict()
        params["text_config"] = {k: cfg[k] for k in keep if k in cfg}
    params["pretrained"] = False
    params["tokenizer_json"] = model.serialized_tokenizer()
    return _local_arch("medclip", params)


def _model_arch(model: nn.Module, family: str) -> dict[str, Any]:
    from medsec.models.medclip import MedCLIP

    if family == "medclip" and isinstance(model, MedCLIP):  # family_of: the family of a MedCLIP
        return _medclip_arch(model)
    arch = getattr(model, "arch", None) or {}
    if not isinstance(arch, dict) or "name" not in arch:
        raise DataError(f"this {type(model).__name__} has no `arch` to rebuild it from; build it through "
                        "medsec.models.create (or create_head for MIL heads)")
    return _local_arch(arch["name"], arch.get("params", {}))


def _model_attributes(model: nn.Module, family: str) -> dict[str, Any]:
    from medsec.models.classifier import Classifier
    from medsec.models.segmenter import Segmenter

    # family is family_of(model), so each test below holds exactly when its family does
    if family == "classifier" and isinstance(model, Classifier):
        return {"task": model.task, "num_classes": model.num_classes, "classes": list(model.classes)}
    if family == "segmenter" and isinstance(model, Segmenter):
        return {"num_classes": model.num_classes, "classes": list(model.classes), "prompt": model.prompt}
    return {}


# ---------------------------------------------------------------------------------- writing
def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (any family) to one safetensors file, atomically; returns the path.

    Args:
        model: a Classifier, Segmenter, ClipModel, MedCLIP or MIL head built by medsec (it
            carries the ``arch`` that rebuilds it).
        path: the file to write.
        extra: a JSON-serialisable record stored with it (recipe, metrics...); read it back
            with :func:`read_metadata` (``["extra"]``).
    """
    from safetensors.torch import save as st_save

    family = family_of(model)
    arch = _model_arch(model, family)
    try:
        check_arch(arch, family, "<model being saved>")
    except DataError as exc:
        log.warning("%s; load_checkpoint will refuse to rebuild %s: build the model and use load_weights", exc, path)
    spec = getattr(model, "spec", None)
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen and t.numel():  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        state[key] = t
    state, zero_rows = pack_zero_rows(state)
    meta = {"format": FORMAT, "version": VERSION, "family": family, "arch": arch,
            "spec": spec.to_dict() if isinstance(spec, InputSpec) else None,
            "attributes": _model_attributes(model, family), "zero_rows": zero_rows, "extra": extra or {}}
    try:
        text = json.dumps(meta, default=str)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the checkpoint metadata is not JSON-serialisable ({exc}); pass plain values in extra") from exc
    return atomic_write_bytes(path, st_save(state, metadata={META_KEY: text}))


# ---------------------------------------------------------------------------------- reading
def _header(path: str | Path) -> dict[str, str]:
    """The raw safetensors metadata of ``path`` (a DataError when missing or not safetensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist; train one with `medsec train CONFIG` or fix the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{str(path)!r} is not a readable safetensors file ({exc})") from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a medsec checkpoint of any family and format, in the current layout
    (``format``, ``version``, ``family``, ``arch``, ``spec``, ``attributes``, ``zero_rows``,
    ``extra``) plus ``source``: the format the file was written in (``medsec.checkpoint-v2``,
    or ``medsec-v1``, ``medsec_clip-v1``, ``medsec-medclip-v1`` for earlier files). Nothing is
    validated or built here (see :func:`load_checkpoint`).

    Raises:
        DataError: a missing or unreadable file, or one without medsec metadata.
    """
    record = _metadata_or_none(path)
    if record is None:
        raise DataError(f"{str(path)!r} has no medsec metadata (a bare state dict, e.g. a MIL head saved by an earlier "
                        "medsec): build the model and load its weights with medsec.models.load_weights(path, model)")
    return record


def _metadata_or_none(path: str | Path) -> dict[str, Any] | None:
    """:func:`read_metadata`, or None for a safetensors file without medsec metadata."""
    path = Path(path)
    meta = _header(path)
    if META_KEY in meta:
        info = _json_object(meta[META_KEY], path, META_KEY)
        if info.get("format") == FORMAT:
            return {**info, "source": f"{FORMAT}-v{info.get('version')}"}
        keys: tuple[str, ...]
        if info.get("task") == "segmentation":  # the classifier/segmenter format before version 2
            family, keys = "segmenter", ("num_classes", "classes")
        else:
            family, keys = "classifier", ("task", "num_classes", "classes")
        return _legacy(family, info.get("arch"), info.get("spec"), {k: info[k] for k in keys if k in info}, {},
                      info.get("extra"), "medsec-v1")
    if "medsec_clip" in meta:
        info = _json_object(meta["medsec_clip"], path, "medsec_clip")
        return _legacy("clip", info.get("arch"), info.get("spec"), {}, info.get("zero_rows") or {}, info.get("extra"),
                      "medsec_clip-v1")
    if meta.get("format") == "medsec-medclip":
        flat = _json_object(meta.get("arch", "null"), path, "arch")
        flat = {**flat, "pretrained": False, "tokenizer_json": meta.get("tokenizer")}
        return _legacy("medclip", {"name": "medclip", "params": flat}, None, {}, {},
                      _json_object(meta.get("extra", "{}"), path, "extra"), "medsec-medclip-v1")
    return None


def _json_object(text: str, path: Path, field: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{str(path)!r}: metadata field {field!r} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{str(path)!r}: metadata field {field!r} is not a JSON object")
    return value


def _legacy(family: str, arch: Any, spec: Any, attributes: dict[str, Any], zero_rows: dict[str, Any], extra: Any,
           source: str) -> dict[str, Any]:
    """An earlier format's metadata in the current layout (version 1)."""
    if isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("params", {}), dict):
        arch = _local_arch(arch["name"], arch.get("params", {}))
    return {"format": FORMAT, "version": 1, "family": family, "arch": arch, "spec": spec, "attributes": attributes,
            "zero_rows": zero_rows, "extra": extra if extra is not None else {}, "source": source}


# ---------------------------------------------------------------------------------- validation
def _is_remote(text: str) -> bool:
    """Whether a string names something outside the file: a hub id, URL or file path."""
    s = text.strip()
    return (s.lower().startswith(REMOTE_PREFIXES) or "://" in s or "/" in s or "\\" in s or s.startswith(("~", "."))
            or (len(s) > 1 and s[1] == ":" and s[0].isalpha()))


def _walk(value: Any, field: str, path: str) -> None:
    """Refuse pretrained flags, remote keys and hub/URL/path strings anywhere in ``value``."""
    if isinstance(value, dict):
        for key, sub in value.items():
            name = f"{field}.{key}"
            lowered = str(key).lower()
            if "pretrained" in lowered and sub:
                raise DataError(f"{path}: metadata field {name!r} is {sub!r}: a checkpoint holds its own weights and "
                                "is never rebuilt from downloaded ones; build the model yourself and use load_weights")
            if lowered in REMOTE_KEYS and sub is not None:
                raise DataError(f"{path}: metadata field {name!r} names something to fetch or open ({sub!r}); "
                                "loading a checkpoint builds only local architectures: build the model yourself "
                                "and use load_weights")
            if lowered in FREE_TEXT_KEYS:
                if sub is not None and not isinstance(sub, str):
                    raise DataError(f"{path}: metadata field {name!r} must be a string")
                continue
            _walk(sub, name, path)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _walk(sub, f"{field}.{i}", path)
    elif isinstance(value, str) and _is_remote(value):
        raise DataError(f"{path}: metadata field {field!r} = {value!r} names a hub id, URL or file; loading a "
                        "checkpoint builds only local architectures: build the model yourself and use load_weights")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise DataError(f"{path}: metadata field {field!r} holds a {type(value).__name__}, not a JSON value")


def check_arch(arch: Any, family: str, path: str) -> None:
    """Raise a DataError unless ``arch`` names an allowed local builder of ``family`` with safe params."""
    if family not in FAMILIES:
        raise DataError(f"{path}: metadata field 'family' is {family!r}; medsec checkpoints are one of "
                        f"{', '.join(FAMILIES)}")
    if not (isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("params", {}), dict)):
        raise DataError(f"{path}: metadata field 'arch' must be {{\"name\": <builder>, \"params\": {{...}}}}, got {arch!r}")
    name, params = arch["name"], arch.get("params", {})
    if name not in FAMILIES[family]:
        raise DataError(f"{path}: metadata field 'arch.name' is {name!r}, not a builder a {family} checkpoint may "
                        f"name ({', '.join(FAMILIES[family])})")
    _walk(params, "arch.params", path)
    factory = _registry_of(family).get(name)
    signature = inspect.signature(factory)
    accepted = set(signature.parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise DataError(f"{path}: metadata field 'arch.params' holds {unknown}, which builder {name!r} does not take")
    default = signature.parameters.get("pretrained")
    if default is not None and default.default not in (None, False, inspect.Parameter.empty) and "pretrained" not in params:
        raise DataError(f"{path}: metadata field 'arch.params.pretrained' is missing and builder {name!r} downloads "
                        "weights by default; a checkpoint must say pretrained: false")
    if name == "medclip" and not isinstance(params.get("tokenizer_json"), str):
        raise DataError(f"{path}: metadata field 'arch.params.tokenizer_json' is missing: a MedCLIP checkpoint "
                        "carries its tokenizer")
    if name in ("open_clip", "hf_clip"):
        config = params.get("config")
        if not isinstance(config, dict):
            raise DataError(f"{path}: metadata field 'arch.params.config' is missing: a CLIP checkpoint is rebuilt "
                            "from its model-config dict (a model named by hub id is rebuilt by you: create it and "
                            "use load_weights)")
        text_cfg = config.get("text_cfg", {})
        if isinstance(text_cfg, dict) and text_cfg.get("hf_model_name") and not isinstance(text_cfg.get("hf_config"), dict):
            raise DataError(f"{path}: metadata field 'arch.params.config.text_cfg.hf_config' is missing: a Hugging "
                            "Face text tower without its config would be fetched from the hub")


def _registry_of(family: str) -> Any:
    if family == "mil_head":
        import medsec.models.mil  # noqa: F401  (registration)

        return MIL_HEADS
    return MODELS


def _checked(record: dict[str, Any], path: Path) -> InputSpec | None:
    """Validate the metadata of ``path`` before anything is built; returns its InputSpec."""
    where = repr(str(path))
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError(f"{where}: metadata field 'version' is {version!r}; expected an integer")
    if version > VERSION:
        raise DataError(f"{where}: metadata field 'version' is {version}, written by a newer medsec (this one reads "
                        f"up to {VERSION}); upgrade medsec")
    family = record.get("family")
    if not isinstance(family, str):
        raise DataError(f"{where}: metadata field 'family' is {family!r}; expected one of {', '.join(FAMILIES)}")
    check_arch(record.get("arch"), family, where)
    for field in ("attributes", "zero_rows", "extra"):
        if not isinstance(record.get(field), dict):
            raise DataError(f"{where}: metadata field {field!r} must be a JSON object, got {record.get(field)!r}")
    attrs = record["attributes"]
    kinds: dict[str, type | tuple[type, ...]] = {"task": str, "num_classes": int, "classes": list, "prompt": (str, type(None))}
    for key, value in attrs.items():
        if key not in kinds or not isinstance(value, kinds[key]) or isinstance(value, bool):
            raise DataError(f"{where}: metadata field 'attributes.{key}' = {value!r} is not a known model attribute "
                            "of its type")
    if not all(isinstance(c, str) for c in attrs.get("classes", [])):
        raise DataError(f"{where}: metadata field 'attributes.classes' must be a list of strings")
    spec = record.get("spec")
    if spec is None:
        return None
    try:
        return InputSpec.from_dict(spec)
    except (MedsecError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"{where}: metadata field 'spec' is not a valid InputSpec ({exc})") from exc


def _build(record: dict[str, Any], path: Path) -> nn.Module:
    name, params = record["arch"]["name"], record["arch"].get("params", {})
    try:
        model: nn.Module = _registry_of(record["family"]).create(name, **copy.deepcopy(params))
    except (MedsecError, TypeError, ValueError, KeyError, RuntimeError, AssertionError) as exc:
        raise DataError(f"{str(path)!r}: metadata field 'arch' ({name!r}) could not be rebuilt: {exc}") from exc
    if family_of(model) != record["family"]:
        raise DataError(f"{str(path)!r}: metadata field 'family' is {record['family']!r} but builder {name!r} "
                        f"makes a {family_of(model)}")
    return model


def _stored_weights(path: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as ``model.state_dict()`` keys (zero rows unpacked, earlier
    formats' key prefixes added)."""
    from safetensors.torch import load_file

    state = unpack_zero_rows(load_file(str(path), device="cpu"), record.get("zero_rows") or {})
    prefix = LEGACY_PREFIX.get(record.get("source", ""), "")
    return {prefix + k: v for k, v in state.items()} if prefix else state


def _put_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(want[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise DataError(f"{str(path)!r}: the weights do not match the architecture: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, other shape {wrong[:3]}")
    model.load_state_dict(state, strict=True)


def _restore(model: nn.Module, record: dict[str, Any], spec: InputSpec | None, path: Path) -> None:
    from medsec.models.classifier import Classifier, register_normalization
    from medsec.models.clip import ClipModel
    from medsec.models.segmenter import Segmenter

    attrs, family = record["attributes"], record["family"]
    for key in ("task", "num_classes"):
        if key in attrs and attrs[key] != getattr(model, key):
            raise DataError(f"{str(path)!r}: metadata field 'attributes.{key}' is {attrs[key]!r} but the rebuilt "
                            f"model has {getattr(model, key)!r}")
    # _build checked that family is family_of(model), so the isinstance tests below narrow the type
    # (save_checkpoint stores classes for classifiers and segmenters only)
    if "classes" in attrs and isinstance(model, (Classifier, Segmenter)):
        model.classes = list(attrs["classes"])
    if family == "segmenter" and isinstance(model, Segmenter) and attrs.get("prompt") is not None:
        try:
            model.set_prompt(attrs["prompt"])
        except MedsecError as exc:
            raise DataError(f"{str(path)!r}: metadata field 'attributes.prompt' does not fit the model ({exc})") from exc
    if spec is not None and family in ("classifier", "segmenter", "clip") \
            and isinstance(model, (Classifier, Segmenter, ClipModel)) and spec != model.spec:
        if spec.channels != model.spec.channels:
            raise DataError(f"{str(path)!r}: metadata field 'spec.channels' is {spec.channels} but the rebuilt model "
                            f"takes {model.spec.channels}")
        model.spec = spec
        register_normalization(model, spec)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in ``path``: a Classifier, Segmenter, ClipModel, MedCLIP or MIL
    head (by the file's ``family``), in eval mode on ``device``.

    Raises:
        DataError: a missing or unreadable file, no medsec metadata, metadata that names an
            architecture outside the family's allow-list or asks for anything to be fetched
            (pretrained weights, hub ids, URLs, paths), or weights that do not fit.
    """
    path = Path(path)
    record = read_metadata(path)
    spec = _checked(record, path)
    model = _build(record, path)
    _put_weights(model, _stored_weights(path, record), path)
    _restore(model, record, spec, path)
    return model.to(device).eval()


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> nn.Module:
    """Load the weights of ``path`` into a ``model`` you built yourself; returns ``model``.

    For medsec checkpoints of any format (weights in the layout of the family's model; the
    architecture in the file is not rebuilt, so this is the way to reload a model that
    :func:`load_checkpoint` refuses to rebuild, e.g. one made from hub weights) and for bare
    safetensors state dicts (e.g. MIL heads saved by earlier medsec versions, loaded into
    :func:`~medsec.models.mil.create_head`'s head).
    """
    from safetensors.torch import load_file

    path = Path(path)
    record = _metadata_or_none(path)
    state = _stored_weights(path, record) if record is not None else load_file(str(path), device="cpu")
    if strict:
        _put_weights(model, state, path)
    else:
        model.load_state_dict(state, strict=False)
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict (.safetensors or .pt/.pth) without unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{str(path)!r} could not be loaded with weights_only=True ({exc}); "
            "medsec never unpickles arbitrary objects: convert it to a state dict or safetensors"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise DataError(f"{str(path)!r} does not hold a state dict")
    return obj


__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "read_metadata", "load_state_dict", "family_of",
           "pack_zero_rows", "unpack_zero_rows", "FAMILIES", "FORMAT", "VERSION"]
