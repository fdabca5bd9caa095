"""The ``kind: wsi`` experiment: label-free whole-slide attacks on a frozen tile encoder
(Liu et al., "The Butterfly Effect in Pathology", arXiv 2505.24141), validated offline on
BloodMNIST MIL bags (Ilse et al. 2018) and run end to end on real slides.

Threat model: white-box on the encoder, label-free and head-free (``random``,
``vulnerability``), grey-box upper bound with the head's attention (``attention``); a
fraction rho of the tiles of each bag, each within eps (L-inf by default).

Driver and workers (:mod:`medsec.runs.executor`): the driver prepares what every cell shares,
once, in the run folder: the encoded BloodMNIST train and test pools (``features/*.h5``), the
test pool's tile vulnerability (``features/vulnerability-test.npy``), one trained MIL head per
(task, head) (``heads/<task>-<head>.safetensors``) and the encoded tiles of every unfinished
slide (``features/slide-<name>.h5``); a rerun loads them and trains nothing. A worker's
:func:`setup` loads them (and redraws the seeded bags); it never trains or writes. Jobs
(:func:`plan_jobs`): the content analysis; each head's clean evaluation; per (task, attack,
rho, strategy) one job for the heads sharing one head-free attack (``random``,
``vulnerability``) or one per head (``attention``); per task one job for every bag defence
(they share the attacked test bags); one per slide. Each cell's figure data goes to
``figures/<cell>.npz``; the driver gathers them into ``figures.npz`` after the cells. Every
finished cell is saved at once; a rerun of the same config resumes and skips finished cells.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.errors import DataError
from medsec.experiments.wsi.config import WSIConfig
from medsec.io import atomic_save_npz
from medsec.runs.context import CellContext, RunContext
from medsec.runs.executor import Job as WorkJob
from medsec.runs.grid import safe_id

log = logging.getLogger(__name__)

FIGURES = "figures.npz"


def _encoder(cfg: WSIConfig, device: torch.device) -> Any:
    from medsec.wsi.encoders import create_encoder

    params = dict(cfg.encoder.params)
    if cfg.encoder.name == "medsec_bloodmnist":
        params.setdefault("cache_dir", cfg.cache_dir)
    return create_encoder(cfg.encoder.name, **params).to(device).eval()


def _psnr_ssim(clean: torch.Tensor, adv: torch.Tensor) -> tuple[float, float]:
    from medsec.metrics.image_quality import psnr, ssim

    return psnr(clean, adv), ssim(clean, adv)


def _slide_path(p: str) -> Path:
    path = Path(p)
    if not path.is_absolute() and not path.is_file():
        from medsec.data import data_root

        path = data_root() / p
    return path


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{path} ({what}, which the driver prepares) is missing on this worker; put the run folder on "
                     "storage every worker reads")


# --------------------------------------------------------------------------- the plan
def _purifiers(cfg: WSIConfig) -> list[tuple[str, dict[str, Any]]]:
    d = cfg.defenses
    out: list[tuple[str, dict[str, Any]]] = []
    if d.jpeg_quality is not None:
        out.append(("jpeg", {"quality": d.jpeg_quality}))
    if d.blur_sigma is not None:
        out.append(("gaussian_blur", {"sigma": d.blur_sigma}))
    return out


def _defense_ids(cfg: WSIConfig, task: str) -> list[str]:
    if not cfg.defenses.enabled:
        return []
    ids = [f"defense/{task}/{name}" for name, _ in _purifiers(cfg)]
    if cfg.defenses.outlier_k is not None:
        ids.append(f"defense/{task}/outlier")
    if cfg.defenses.finetune_epochs is not None:
        ids.append(f"defense/{task}/adv_finetune")
    return ids


def _attack_id(task: str, head: str, attack: str, rho: float, strategy: str) -> str:
    return f"attack/{task}/{head}/{attack}/{rho:g}/{strategy}"


def plan(cfg: WSIConfig) -> list[str]:
    """The cell ids of a config: the content analysis, per bag task the clean evaluation of
    every head, every (head, attack, rho, strategy) and the bag defences, then every slide."""
    ids: list[str] = []
    if cfg.bags is not None:
        ids.append("content")
        for task in cfg.bags.tasks:
            ids += [f"clean/{task.name}/{h.name}" for h in cfg.heads]
            ids += [_attack_id(task.name, h.name, a, rho, s) for a in cfg.attack.names for rho in cfg.attack.rhos
                    for s in cfg.attack.strategies for h in cfg.heads]
            ids += _defense_ids(cfg, task.name)
    if cfg.slides is not None:
        ids += [f"slide/{Path(p).stem}" for p in cfg.slides.paths]
    return ids


@dataclass(frozen=True)
class Job:
    """A job's payload (plain data): its step, its cells and what the step needs to know.

    Attributes:
        step: ``content``, ``clean``, ``attack``, ``defense`` or ``slide``.
        cells: the job's cell ids, in plan order.
        task: the bag task (clean, attack, defense).
        heads: the head of each cell (clean, attack).
        attack, rho, strategy: the attack cells' grid point.
        slide: the slide's position in ``slides.paths``.
        encode_seconds: the driver's tiling and encoding time of the slide.
        figures: what this job adds to the report's figure data (``mosaic``, ``example``).
    """

    step: str
    cells: tuple[str, ...]
    task: str = ""
    heads: tuple[str, ...] = ()
    attack: str = ""
    rho: float = 0.0
    strategy: str = ""
    slide: int = -1
    encode_seconds: float = 0.0
    figures: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.cells[0]


def plan_jobs(cfg: WSIConfig, encode_seconds: dict[str, float] | None = None) -> list[Job]:
    """The jobs of a config, in plan order. Head-free attacks (``random``, ``vulnerability``)
    attack the bags once for every head, so their heads' cells are one job; a task's bag
    defences share the attacked test bags, so they are one job. The first attack cell keeps
    the example tiles and the first ``attention`` cell the bag mosaic of the report."""
    jobs: list[Job] = []
    example, mosaic = True, True
    if cfg.bags is not None:
        jobs.append(Job("content", ("content",)))
        heads = [h.name for h in cfg.heads]
        for task in cfg.bags.tasks:
            jobs += [Job("clean", (f"clean/{task.name}/{h}",), task=task.name, heads=(h,)) for h in heads]
            for a in cfg.attack.names:
                for rho in cfg.attack.rhos:
                    for s in cfg.attack.strategies:
                        groups = [[h] for h in heads] if s == "attention" else [heads]
                        for group in groups:
                            figs = (("example",) if example else ()) + (("mosaic",) if mosaic and s == "attention" else ())
                            example, mosaic = False, mosaic and s != "attention"
                            jobs.append(Job("attack", tuple(_attack_id(task.name, h, a, rho, s) for h in group),
                                            task=task.name, heads=tuple(group), attack=a, rho=rho, strategy=s,
                                            figures=figs))
            ids = _defense_ids(cfg, task.name)
            if ids:
                jobs.append(Job("defense", tuple(ids), task=task.name))
    if cfg.slides is not None:
        for i, p in enumerate(cfg.slides.paths):
            name = Path(p).stem
            jobs.append(Job("slide", (f"slide/{name}",), slide=i,
                            encode_seconds=float((encode_seconds or {}).get(name, 0.0))))
    return jobs


def _figure_file(cell: str) -> str:
    """A cell's figure data, relative to the run folder."""
    return f"figures/{safe_id(cell)}.npz"


# --------------------------------------------------------------------------- prepared state
@dataclass
class TaskBags:
    """A bag task's train and test bags, their features and its trained heads."""

    btr: Any
    bte: Any
    ftr: list[torch.Tensor]
    fte: list[torch.Tensor]
    heads: dict[str, Any]


@dataclass
class SlideBag:
    """A slide's tile grid and encoded tiles, as the driver prepared them."""

    grid: Any
    features: torch.Tensor
    encode_seconds: float


@dataclass
class State:
    """What every cell needs: the encoder, the pools, their vulnerability, the bags and heads."""

    encoder: Any
    pools: dict[str, Any] | None = None
    scores: torch.Tensor | None = None
    tasks: dict[str, TaskBags] = field(default_factory=dict)
    task_info: dict[str, Any] = field(default_factory=dict)
    slide_head: Any | None = None
    slides: dict[str, SlideBag] = field(default_factory=dict)


def _gen(ctx: CellContext, *parts: Any) -> torch.Generator:
    """The CPU generator of one step of the run (seeded from the run seed and the step's name)."""
    return ctx.generator("/".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts), device="cpu")


def _pools(ctx: CellContext, encoder: Any) -> dict[str, Any]:
    """The BloodMNIST train and test pools with their features (encoded by the driver)."""
    import medsec.data
    from medsec.data import data_root
    from medsec.wsi.feature_cache import TensorTiles, extract_features, load_features

    cfg = ctx.cfg
    assert cfg.bags is not None
    root = Path(cfg.bags.root) if cfg.bags.root else data_root() / "bloodmnist"
    if not (root / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA or bags.root")
    pools = {}
    for split in ("train", "test"):
        ds = medsec.data.create("medmnist", flag="bloodmnist", split=split, root=str(root))
        x = ds.images
        path = ctx.out / "features" / f"bloodmnist-{split}.h5"
        if ctx.on_worker:
            if not path.is_file():
                raise _missing(path, f"the encoded BloodMNIST {split} pool")
            bag = load_features(path)
            if len(bag) != len(ds):
                raise DataError(f"{path} holds {len(bag)} tiles, not the {len(ds)} of the {split} pool")
        else:
            coords = np.stack([np.arange(len(ds)), np.zeros(len(ds), dtype=np.int64)], 1)
            bag = extract_features(encoder, TensorTiles(x), coords, path, batch_size=512)
        pools[split] = {"x": x, "y": ds.labels.numpy(), "f": bag.features}
    return pools


def _reuse(ctx: CellContext) -> bool:
    """Whether the heads and scores in the run folder belong to this run: always on a worker;
    on the driver when a previous run of this config got past the preparation (its ``tasks``
    section is there), so ``--restart`` trains again instead of reusing another config's heads."""
    return ctx.on_worker or ctx.section("tasks") is not None


def _scores(ctx: CellContext, encoder: Any, te: dict[str, Any]) -> torch.Tensor:
    """The test pool's tile vulnerability (computed once by the driver)."""
    from medsec.wsi.budget import vulnerability_scores
    from medsec.wsi.feature_cache import TensorTiles

    path = ctx.out / "features" / "vulnerability-test.npy"
    if path.is_file() and _reuse(ctx):
        return torch.from_numpy(np.load(path))
    if ctx.on_worker:
        raise _missing(path, "the test pool's tile vulnerability")
    scores = vulnerability_scores(encoder, TensorTiles(te["x"]), _budget_threat(ctx.cfg), _gen(ctx, "vuln"),
                                  distance=ctx.cfg.attack.distance)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, scores.numpy())
    tmp.replace(path)
    return scores


def _head_path(out: Path, task: str, head: str) -> Path:
    return out / "heads" / f"{task}-{head}.safetensors"


def _train_head(ctx: CellContext, comp: Any, dim: int, bags: list[torch.Tensor], labels: np.ndarray, path: Path,
                cell: str) -> Any:
    """The trained head of (task, head), loaded from the run folder: trained there first (by the
    driver, under the seed of ``cell``) when no previous run of this config saved it."""
    from medsec.models.checkpoint import load_checkpoint, save_checkpoint
    from medsec.wsi.mil import create_head, train_mil

    if not (path.is_file() and _reuse(ctx)):
        if ctx.on_worker:
            raise _missing(path, f"the trained {comp.name} head")
        with ctx.cell(cell):  # the head's initialisation and training are seeded per (task, head)
            head = create_head(comp.name, dim, 2, **comp.params).to(ctx.device)
            train_mil(head, bags, torch.as_tensor(labels), generator=_gen(ctx, cell), **ctx.cfg.train.model_dump())
        save_checkpoint(head, path, extra={"cell": cell})
    # every executor evaluates the same saved head
    return load_checkpoint(path, device=ctx.device).eval()


def prepare(ctx: CellContext) -> State:
    """The encoder, the pools and their features, the vulnerability scores, the bags and the
    trained heads: made (encoded, trained) and saved by the driver, loaded by a worker."""
    from medsec.wsi.bags import make_bags

    cfg: WSIConfig = ctx.cfg
    state = State(_encoder(cfg, ctx.device))
    if cfg.bags is None:
        return state
    b = cfg.bags
    pools = state.pools = _pools(ctx, state.encoder)
    te = pools["test"]
    state.scores = _scores(ctx, state.encoder, te)
    for task in b.tasks:
        gt = _gen(ctx, "bags", task.name)
        btr = make_bags(pools["train"]["y"], task.positive, b.n_train, b.size_min, b.size_max, b.key_min, b.key_max,
                        generator=gt)
        bte = make_bags(te["y"], task.positive, b.n_test, b.size_min, b.size_max, b.key_min,
                        b.key_max if b.test_key_max is None else b.test_key_max, generator=gt)
        ftr = [pools["train"]["f"][i] for i in btr.indices]
        fte = [te["f"][i] for i in bte.indices]
        heads = {comp.name: _train_head(ctx, comp, state.encoder.dim, ftr, btr.labels,
                                        _head_path(ctx.out, task.name, comp.name), f"head/{task.name}/{comp.name}")
                 for comp in cfg.heads}
        state.tasks[task.name] = TaskBags(btr, bte, ftr, fte, heads)
        state.task_info[task.name] = {
            "positive": task.positive, "n_train": len(btr), "n_test": len(bte),
            "bag_sizes": [int(min(map(len, bte.indices))), int(max(map(len, bte.indices)))],
            "key_tiles_per_positive_bag": [b.key_min, b.key_max],
            "key_tiles_per_positive_test_bag": [b.key_min, b.key_max if b.test_key_max is None else b.test_key_max]}
    # the slides' attention comes from the first task's first head
    state.slide_head = state.tasks[b.tasks[0].name].heads[cfg.heads[0].name]
    return state


def _slide_bag(ctx: CellContext, encoder: Any, slide: Any) -> SlideBag:
    """A slide's tile grid and encoded tiles: encoded into the run folder by the driver, loaded
    by a worker."""
    from medsec.wsi.feature_cache import extract_features, load_features
    from medsec.wsi.tiling import SlideTiles, tile_grid

    sc = ctx.cfg.slides
    t0 = time.perf_counter()
    grid = tile_grid(slide, sc.tile_size, level=sc.level, mpp=sc.mpp, min_tissue=sc.min_tissue)
    if len(grid) == 0:
        raise DataError(f"no tissue tile of {sc.tile_size} px in {slide.name}; lower slides.min_tissue or the tile size")
    path = ctx.out / "features" / f"slide-{slide.name}.h5"
    if ctx.on_worker:
        if not path.is_file():
            raise _missing(path, f"the encoded tiles of {slide.name}")
        bag = load_features(path)
        if not np.array_equal(bag.coords, grid.coords):
            raise DataError(f"{path} holds another tile grid than slides: asks for; rerun the driver")
    else:
        bag = extract_features(encoder, SlideTiles(slide, grid), grid.coords, path, batch_size=32)
    return SlideBag(grid, bag.features, time.perf_counter() - t0)


def _prepare_slides(ctx: RunContext, state: State) -> None:
    """Tile and encode every slide whose cell is not finished (the driver's share of the slides)."""
    from medsec.wsi.slide import Slide

    assert ctx.cfg.slides is not None
    for p in ctx.cfg.slides.paths:
        slide = Slide(_slide_path(p))
        try:
            if ctx.store.done(f"slide/{slide.name}") is None:
                state.slides[slide.name] = _slide_bag(ctx, state.encoder, slide)
        finally:
            slide.close()


# --------------------------------------------------------------------------- bag cells
def _metrics(head: Any, bags: list[torch.Tensor], labels: np.ndarray) -> dict[str, Any]:
    from medsec.wsi.mil import evaluate_mil

    m = evaluate_mil(head, [b.to(_device(head)) for b in bags], torch.as_tensor(labels))
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auroc": m["auroc"],
            "pred": m["pred"].tolist(), "p_pos": m["probs"][:, 1].tolist()}


def _device(module: Any) -> torch.device:
    device: torch.device = next(module.parameters()).device
    return device


def _budget_threat(cfg: WSIConfig) -> Any:
    from medsec.types import ThreatModel

    return ThreatModel(cfg.attack.norm, cfg.attack.eps)


def _attack_bags(cfg: WSIConfig, encoder: Any, pool: dict[str, Any], bagset: Any, feats: list[torch.Tensor],
                 attack: str, rho: float, strategy: str, head: Any, gen: torch.Generator,
                 scores: torch.Tensor | None) -> dict[str, Any]:
    from medsec.wsi.budget import WSIBudget
    from medsec.wsi.feature_cache import TensorTiles
    from medsec.wsi.slide_attack import attack_slide

    budget = WSIBudget(rho, cfg.attack.eps, cfg.attack.norm)
    params = dict(cfg.attack.params.get(attack, {}))
    adv, sel, devs, clean_t, adv_t, secs, hits = [], [], [], [], [], 0.0, []
    for b, idx in enumerate(bagset.indices):
        res = attack_slide(encoder, TensorTiles(pool["x"][idx]), feats[b], budget, attack, strategy, head=head,
                           generator=gen, distance=cfg.attack.distance,
                           scores=None if scores is None else scores[idx], **params)
        adv.append(res.features_adv)
        sel.append(res.indices.tolist())
        devs.append(res.deviation)
        clean_t.append(res.tiles_clean)
        adv_t.append(res.tiles_adv)
        secs += res.seconds
        key = bagset.key_mask(b, pool["y"])
        hits.append(int(key[res.indices.numpy()].sum()))
    dev = torch.cat(devs)
    ct, at = torch.cat(clean_t), torch.cat(adv_t)
    p, s = _psnr_ssim(ct, at)
    linf = float((at - ct).abs().amax()) if at.numel() else 0.0
    return {"features": adv, "selected": sel, "deviation": dev, "tiles_clean": ct, "tiles_adv": at,
            "summary": {"k_mean": float(np.mean([len(s_) for s_ in sel])), "deviation_mean": float(dev.mean()),
                        "deviation_median": float(dev.median()), "psnr": p, "ssim": s, "linf_255": linf * 255,
                        "seconds": secs, "key_tiles_hit": int(sum(hits)),
                        "bags_with_key_hit": int(sum(1 for h in hits if h > 0))}}


def _content_cell(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Tile vulnerability against tile content on a seeded sample of the test pool."""
    from medsec.wsi.content import content_correlations, tile_content

    assert state.pools is not None and state.scores is not None
    te, scores = state.pools["test"], state.scores
    with ctx.cell("content"):
        sub = torch.randperm(len(te["x"]), generator=_gen(ctx, "content"))[:1000]
        content = tile_content(te["x"][sub])
        corr = content_correlations(scores[sub].numpy(), content)
    by_class = {int(c): float(scores[torch.as_tensor(te["y"] == c)].mean()) for c in np.unique(te["y"])}
    ctx.save_npz(_figure_file("content"), content_vuln=scores[sub].numpy(),
                 **{f"content_{k}": v for k, v in content.items()})
    return [("content", {"n_tiles": int(sub.numel()), "spearman": corr, "vulnerability_by_class": by_class,
                         "vulnerability_mean": float(scores.mean())})]


def _clean_cell(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """A head's clean slide-level performance on the test bags of a task."""
    tb = state.tasks[job.task]
    out = []
    for cell, head in zip(job.cells, job.heads):
        with ctx.cell(cell):
            out.append((cell, {"task": job.task, "head": head, **_metrics(tb.heads[head], tb.fte, tb.bte.labels)}))
    return out


def _attack_cells(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """One (task, attack, rho, strategy) point for the job's heads: the test bags attacked once
    (per head for ``attention``), then every head evaluated on them."""
    cfg: WSIConfig = ctx.cfg
    assert state.pools is not None
    te, tb = state.pools["test"], state.tasks[job.task]
    attention = job.strategy == "attention"
    out = []
    shared = None
    for cell, head_name in zip(job.cells, job.heads):
        head = tb.heads[head_name]
        if attention or shared is None:
            with ctx.cell(cell if attention else job.id):
                res = _attack_bags(cfg, state.encoder, te, tb.bte, tb.fte, job.attack, job.rho, job.strategy,
                                   head if attention else None,
                                   _gen(ctx, "attack", job.task, job.attack, job.rho, job.strategy,
                                        head_name if attention else ""),
                                   state.scores if job.strategy == "vulnerability" else None)
            if not attention:
                shared = res
        else:
            res = shared
        with ctx.cell(cell):
            clean = _metrics(head, tb.fte, tb.bte.labels)  # the clean cell's numbers (the same saved head)
            m = _metrics(head, res["features"], tb.bte.labels)
        changed = np.asarray(m["pred"]) != np.asarray(clean["pred"])
        pos = tb.bte.labels == 1
        out.append((cell, {
            "task": job.task, "head": head_name, "attack": job.attack, "rho": job.rho, "strategy": job.strategy,
            "eps": cfg.attack.eps, "eps_255": cfg.attack.eps * 255, "norm": cfg.attack.norm,
            "clean": {k: clean[k] for k in ("accuracy", "balanced_accuracy", "auroc")},
            "attacked": {k: m[k] for k in ("accuracy", "balanced_accuracy", "auroc")},
            "delta_accuracy": clean["accuracy"] - m["accuracy"], "flip_rate": float(np.mean(changed)),
            "flip_rate_positive": float(np.mean(changed[pos])),
            **res["summary"], "pred": m["pred"], "selected": res["selected"]}))
        if job.figures and cell == job.cells[0]:
            figs = _figure_data(job, head_name, res, tb, te, head)
            ctx.save_npz(_figure_file(cell), **figs)
    return out


def _figure_data(job: Job, head_name: str, res: dict[str, Any], tb: TaskBags, te: dict[str, Any],
                 head: Any) -> dict[str, np.ndarray]:
    """Data of the report's figures: the first positive test bag's mosaic (attention and
    attacked tiles) of the first ``attention`` cell, and a few clean/adversarial tiles of the
    first attack cell."""
    tag = f"{job.task}|{head_name}|{job.attack}|{job.rho:g}|{job.strategy}"
    figs: dict[str, np.ndarray] = {}
    if "mosaic" in job.figures:
        bte = tb.bte
        b = int(np.flatnonzero(bte.labels == 1)[0])
        idx = bte.indices[b]
        # at most 400 tiles are drawn: always the key and the attacked ones (in a bag of up to
        # 2,000 tiles they are rarely among the first 400), then the others in bag order
        sel = np.asarray(res["selected"][b]).astype(np.int64)
        key = np.flatnonzero(bte.key_mask(b, te["y"]))
        must = np.union1d(key, sel)
        rest = np.setdiff1d(np.arange(len(idx)), must)[: max(0, 400 - len(must))]
        show = np.sort(np.concatenate([must, rest]))
        figs["mosaic_tiles"] = (te["x"][idx[show]] * 255).round().to(torch.uint8).numpy()
        figs["mosaic_attention"] = head.attention(tb.fte[b]).cpu().numpy()[show]
        figs["mosaic_selected"] = np.flatnonzero(np.isin(show, sel))
        figs["mosaic_key"] = np.flatnonzero(np.isin(show, key))
        figs["mosaic_tag"] = np.asarray(tag)
    if "example" in job.figures and res["tiles_clean"].shape[0] >= 1:
        figs["example_clean"] = res["tiles_clean"][:6].numpy()
        figs["example_adv"] = res["tiles_adv"][:6].numpy()
        figs["example_deviation"] = res["deviation"][:6].numpy()
        figs["example_tag"] = np.asarray(tag)
    return figs


def _defense_cells(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """A task's bag defences, at ``defenses.rho`` with the first attack and the first head:
    the test bags are attacked once (per strategy) for every defence of the job."""
    import medsec.defenses
    from medsec.registry import DETECTORS
    from medsec.wsi.defenses import adversarial_finetune, drop_flagged
    from medsec.wsi.mil import create_head

    cfg: WSIConfig = ctx.cfg
    assert state.pools is not None
    encoder, pools, task = state.encoder, state.pools, job.task
    tb = state.tasks[task]
    bte, fte = tb.bte, tb.fte
    d = cfg.defenses
    attack, rho = cfg.attack.names[0], d.rho
    te = pools["test"]
    comp = cfg.heads[0]
    head = tb.heads[comp.name]
    strategies = [s for s in ("random", "attention") if s in cfg.attack.strategies] or ["random"]
    with ctx.cell(job.id):
        attacked = {s: _attack_bags(cfg, encoder, te, bte, fte, attack, rho, s, head if s == "attention" else None,
                                    _gen(ctx, "defence-attack", task, s), None) for s in strategies}
    base = {"task": task, "head": comp.name, "attack": attack, "rho": rho}
    out: list[tuple[str, dict[str, Any]]] = []
    for name, params in _purifiers(cfg):
        key = f"defense/{task}/{name}"
        if key not in job.cells:
            continue
        with ctx.cell(key):
            pur = medsec.defenses.create(name, **params)
            with torch.no_grad():
                fp = torch.cat([encoder.encode(pur(te["x"][i:i + 1024])) for i in range(0, len(te["x"]), 1024)])
            clean_b = [fp[i] for i in bte.indices]
            row = {**base, "defense": name, "params": params, "clean": _metrics(head, clean_b, bte.labels)["accuracy"]}
            for s, res in attacked.items():
                bags = []
                for b, sel in enumerate(res["selected"]):
                    bag = clean_b[b].clone()
                    tiles_adv = res["tiles_adv"][sum(len(x) for x in res["selected"][:b]):][:len(sel)]
                    bag[torch.as_tensor(sel)] = encoder.encode(pur(tiles_adv))
                    bags.append(bag)
                row[f"attacked_{s}"] = _metrics(head, bags, bte.labels)["accuracy"]
                row[f"undefended_{s}"] = _metrics(head, res["features"], bte.labels)["accuracy"]
        out.append((key, row))
    key = f"defense/{task}/outlier"
    if key in job.cells:
        with ctx.cell(key):
            g = _gen(ctx, "outlier", task)
            fit_idx = torch.randperm(len(pools["train"]["f"]), generator=g)[:4000]
            det = DETECTORS.create("embedding_outlier", k=d.outlier_k, quantile=d.outlier_quantile)
            det.fit(pools["train"]["f"][fit_idx])
            row = {**base, "defense": "outlier", "params": {"k": d.outlier_k, "quantile": d.outlier_quantile},
                   "threshold": det.threshold_}
            clean_flags = [det.detect(f) for f in fte]
            row["clean_tile_fpr"] = float(np.mean(np.concatenate(clean_flags)))
            row["clean"] = _metrics(head, [drop_flagged(f, m) for f, m in zip(fte, clean_flags)], bte.labels)["accuracy"]
            for s, res in attacked.items():
                adv_z = torch.cat([f[torch.as_tensor(sel)] for f, sel in zip(res["features"], res["selected"])])
                row[f"tpr_{s}"] = float(det.detect(adv_z).mean())
                bags = [drop_flagged(f, det.detect(f)) for f in res["features"]]
                row[f"attacked_{s}"] = _metrics(head, bags, bte.labels)["accuracy"]
                row[f"undefended_{s}"] = _metrics(head, res["features"], bte.labels)["accuracy"]
        out.append((key, row))
    key = f"defense/{task}/adv_finetune"
    if key in job.cells:
        assert d.finetune_epochs is not None
        with ctx.cell(key):
            g = _gen(ctx, "finetune", task)
            adv_tr = _attack_bags(cfg, encoder, pools["train"], tb.btr, tb.ftr, attack, rho, "random", None, g,
                                  None)["features"]
            ft = create_head(comp.name, encoder.dim, 2, **comp.params).to(ctx.device)
            ft.load_state_dict(copy.deepcopy(head.state_dict()))
            adversarial_finetune(ft, tb.ftr, adv_tr, tb.btr.labels, epochs=d.finetune_epochs, lr=cfg.train.lr / 2,
                                 generator=g)
            row = {**base, "defense": "adv_finetune", "params": {"epochs": d.finetune_epochs},
                   "clean": _metrics(ft, fte, bte.labels)["accuracy"]}
            for s in strategies:
                res = attacked[s] if s == "random" else _attack_bags(cfg, encoder, te, bte, fte, attack, rho, s, ft,
                                                                     _gen(ctx, "defence-attack-ft", task, s), None)
                row[f"attacked_{s}"] = _metrics(ft, res["features"], bte.labels)["accuracy"]
                row[f"undefended_{s}"] = _metrics(head, attacked[s]["features"], bte.labels)["accuracy"]
        out.append((key, row))
    return out


# --------------------------------------------------------------------------- slides
def _slide_cell(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """A real slide: vulnerability of its tiles, the vulnerability and random attacks, the
    head's attention, the purifiers' effect on the attacked tiles and the figure data."""
    import medsec.defenses
    from medsec.objectives.feature_deviation import deviation
    from medsec.wsi.budget import WSIBudget, vulnerability_scores
    from medsec.wsi.content import content_correlations, tile_content
    from medsec.wsi.slide import Slide
    from medsec.wsi.slide_attack import attack_slide
    from medsec.wsi.tiling import SlideTiles

    cfg: WSIConfig = ctx.cfg
    sc = cfg.slides
    assert sc is not None
    encoder, head, i = state.encoder, state.slide_head, job.slide
    attack = cfg.attack.names[0]
    slide = Slide(_slide_path(sc.paths[i]))
    try:
        prepared = state.slides.get(slide.name)
        sb = prepared if prepared is not None else _slide_bag(ctx, encoder, slide)
        grid, features = sb.grid, sb.features
        tiles = SlideTiles(slide, grid)
        with ctx.cell(job.id):
            g = _gen(ctx, "slide", slide.name)
            budget = WSIBudget(sc.rho, cfg.attack.eps, cfg.attack.norm)
            scores = vulnerability_scores(encoder, tiles, budget.threat, g, batch_size=32, distance=cfg.attack.distance)
            res = attack_slide(encoder, tiles, features, budget, attack, "vulnerability", generator=g,
                               distance=cfg.attack.distance, scores=scores, **cfg.attack.params.get(attack, {}))
            res_r = attack_slide(encoder, tiles, features, budget, attack, "random", generator=g,
                                 distance=cfg.attack.distance, **cfg.attack.params.get(attack, {}))
        p_, s_ = _psnr_ssim(res.tiles_clean, res.tiles_adv)
        content = tile_content(tiles[np.arange(len(grid))]) if len(grid) <= 2000 else None
        row: dict[str, Any] = {
            "slide": slide.name, "dimensions": list(slide.dimensions), "levels": slide.level_count, "mpp": slide.mpp,
            "level": grid.level, "tile_size": grid.tile_size, "read_size": grid.read_size, "n_tiles": len(grid),
            "k": int(res.indices.numel()), "rho": sc.rho, "attack": attack, "eps_255": cfg.attack.eps * 255,
            "deviation_vulnerability": res.deviation.tolist(), "deviation_random": res_r.deviation.tolist(),
            "selected_vulnerability": res.indices.tolist(), "selected_random": res_r.indices.tolist(),
            "psnr": p_, "ssim": s_,
            "encode_seconds": job.encode_seconds or sb.encode_seconds,
            "attack_seconds": res.seconds,
            "vulnerability_mean": float(scores.mean()), "vulnerability_max": float(scores.max()),
        }
        if content is not None:
            row["content_spearman"] = content_correlations(scores.numpy(), content)
        figs: dict[str, np.ndarray] = {}
        if head is not None and getattr(head, "in_dim", None) == encoder.dim:
            with torch.no_grad():
                a = head.attention(features.to(ctx.device)).cpu()
                pc = torch.softmax(head(features.to(ctx.device)), 0)[1].item()
                pa = torch.softmax(head(res.features_adv.to(ctx.device)), 0)[1].item()
            row.update({"head_p_positive_clean": pc, "head_p_positive_attacked": pa})
            figs[f"slide{i}_attention"] = a.numpy()
        if cfg.defenses.enabled:
            target = sc.macenko_target
            try:
                # Macenko stain normalisation (the registered purifier; default target in its docstring)
                mac = medsec.defenses.create("stain_normalization", **({"target": target} if target else {}))
                zc = encoder.encode(mac(res.tiles_clean))
                za = encoder.encode(mac(res.tiles_adv))
                row["macenko_deviation"] = deviation(za, zc).tolist()
                row["macenko_failures"] = mac.passthrough_
            except DataError as exc:
                row["macenko_error"] = str(exc)
            for name, params in (("jpeg", {"quality": cfg.defenses.jpeg_quality or 75}),
                                 ("gaussian_blur", {"sigma": cfg.defenses.blur_sigma or 1.0})):
                pur = medsec.defenses.create(name, **params)
                row[f"{name}_deviation"] = deviation(encoder.encode(pur(res.tiles_adv)),
                                                     encoder.encode(pur(res.tiles_clean))).tolist()
        thumb, ds = slide.thumbnail(512)
        figs.update({f"slide{i}_thumb": thumb, f"slide{i}_coords": grid.coords,
                     f"slide{i}_footprint": np.asarray([grid.footprint, ds]), f"slide{i}_scores": scores.numpy(),
                     f"slide{i}_selected": res.indices.numpy(), f"slide{i}_name": np.asarray(slide.name),
                     f"slide{i}_clean": res.tiles_clean[:2].numpy(), f"slide{i}_adv": res.tiles_adv[:2].numpy()})
        ctx.save_npz(_figure_file(job.id), **figs)
    finally:
        slide.close()
    return [(job.id, row)]


# --------------------------------------------------------------------------- driver and workers
STEPS = {"content": _content_cell, "clean": _clean_cell, "attack": _attack_cells, "defense": _defense_cells,
         "slide": _slide_cell}


def setup(ctx: CellContext) -> State:
    """A worker's state: the encoder, the pools, the bags and the heads the driver prepared,
    loaded once (:mod:`medsec.runs.executor`)."""
    return prepare(ctx)


def work(state: State, job: Job, ctx: CellContext) -> list[tuple[str, dict[str, Any]]]:
    """Run one job on a prepared state: ``(cell id, record)`` per cell."""
    records = STEPS[job.step](state, job, ctx)
    log.info("%s: %d cell(s) done", job.id, len(records))
    return records


def _gather_figures(ctx: RunContext, ids: list[str], resumed: bool) -> None:
    """``figures.npz``: the figure data of every finished cell (over what the run this one
    resumes kept; a restarted run starts from none)."""
    path = ctx.out / FIGURES
    figs: dict[str, np.ndarray] = {}
    if resumed and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            figs = {k: z[k] for k in z.files}
    for cell in ids:
        part = ctx.out / _figure_file(cell)
        if part.is_file():
            with np.load(part, allow_pickle=False) as z:
                figs.update({k: z[k] for k in z.files})
    atomic_save_npz(path, **figs)


def run(ctx: RunContext) -> None:
    """Run a ``kind: wsi`` config into ``ctx.store`` (finished cells are skipped)."""
    cfg: WSIConfig = ctx.cfg
    st = ctx.store
    resumed = ctx.section("figures") is not None
    ids = plan(cfg)
    st.plan(ids)
    state = prepare(ctx)
    st.update(encoder={"name": cfg.encoder.name, "dim": state.encoder.dim, "spec": state.encoder.spec.to_dict()},
              figures=FIGURES)
    if cfg.bags is not None:
        st.update(tasks=state.task_info)
    if cfg.slides is not None:
        _prepare_slides(ctx, state)
    jobs = plan_jobs(cfg, {name: sb.encode_seconds for name, sb in state.slides.items()})
    ctx.execute([WorkJob(j.id, j.cells, j) for j in jobs], setup=setup, work=work, state=state)
    _gather_figures(ctx, ids, resumed)
    st.update(summary=summarize(st.results))


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """Worst accuracy drop per (strategy, rho) over tasks and heads, and the paper's comparison."""
    cells = [v for k, v in r.get("cells", {}).items() if k.startswith("attack/")]
    out: dict[str, Any] = {}
    for c in cells:
        key = f"{c['strategy']}@{c['rho']:g}"
        best = out.get(key)
        if best is None or c["delta_accuracy"] > best["delta_accuracy"]:
            out[key] = {k: c[k] for k in ("task", "head", "attack", "delta_accuracy", "flip_rate")}
    return {"worst_drop": out, "paper_worst_case_drop": 0.20,
            "n_cells": len(cells), "mean_drop": float(np.mean([c["delta_accuracy"] for c in cells])) if cells else None}


def check(cfg: WSIConfig) -> None:
    """Refuse an unknown encoder or MIL head, or a parameter they do not take, before any work."""
    from medsec.config.loader import check_component
    from medsec.models.names import resolve
    from medsec.registry import ENCODERS, MIL_HEADS

    key, params = resolve(cfg.encoder.name, cfg.encoder.params, registry=ENCODERS)
    check_component(ENCODERS, key, params, "encoder")
    for head in cfg.heads:
        check_component(MIL_HEADS, head.name, {"in_dim": 1, "num_classes": 2, **head.params}, "heads")


__all__ = ["Job", "State", "check", "plan", "plan_jobs", "prepare", "run", "setup", "summarize", "work"]
