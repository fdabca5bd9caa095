"""The ``kind: wsi`` experiment: label-free whole-slide attacks on a frozen tile encoder
(Liu et al., "The Butterfly Effect in Pathology", arXiv 2505.24141), validated offline on
BloodMNIST MIL bags (Ilse et al. 2018) and run end to end on real slides.

Threat model: white-box on the encoder, label-free and head-free (``random``,
``vulnerability``), grey-box upper bound with the head's attention (``attention``); a
fraction rho of the tiles of each bag, each within eps (L-inf by default).

Steps (``bags:``): encode the BloodMNIST train and test pools once (HDF5 cache); per task,
draw train and test bags; train each MIL head on clean train bags (cached per head);
evaluate clean; per (attack, rho, strategy) attack every test bag and evaluate every
head (random and vulnerability attacks do not depend on the head, so they are computed
once and reused); analyse per-tile deviation, PSNR/SSIM and vulnerability vs content;
defences. Steps (``slides:``): tile, encode (HDF5), vulnerability scores, attack, heatmap.
``results.json`` is rewritten after every finished cell; a rerun of the same config
resumes and skips finished cells.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsec.errors import DataError
from medsec.experiments.wsi.config import WSIConfig
from medsec.io import atomic_save_npz
from medsec.runs.context import RunContext

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- the plan
def _purifiers(cfg: WSIConfig) -> list[tuple[str, dict[str, Any]]]:
    d = cfg.defenses
    out: list[tuple[str, dict[str, Any]]] = []
    if d.jpeg_quality is not None:
        out.append(("jpeg", {"quality": d.jpeg_quality}))
    if d.blur_sigma is not None:
        out.append(("gaussian_blur", {"sigma": d.blur_sigma}))
    return out


def plan(cfg: WSIConfig) -> list[str]:
    """The cell ids of a config: the content analysis, per bag task the clean evaluation of
    every head, every (head, attack, rho, strategy) and the bag defences, then every slide."""
    ids: list[str] = []
    if cfg.bags is not None:
        ids.append("content")
        for task in cfg.bags.tasks:
            ids += [f"clean/{task.name}/{h.name}" for h in cfg.heads]
            ids += [f"attack/{task.name}/{h.name}/{a}/{rho:g}/{s}" for a in cfg.attack.names for rho in cfg.attack.rhos
                    for s in cfg.attack.strategies for h in cfg.heads]
            if cfg.defenses.enabled:
                ids += [f"defense/{task.name}/{name}" for name, _ in _purifiers(cfg)]
                if cfg.defenses.outlier_k is not None:
                    ids.append(f"defense/{task.name}/outlier")
                if cfg.defenses.finetune_epochs is not None:
                    ids.append(f"defense/{task.name}/adv_finetune")
    if cfg.slides is not None:
        ids += [f"slide/{Path(p).stem}" for p in cfg.slides.paths]
    return ids


# --------------------------------------------------------------------------- bags
def _pools(cfg: WSIConfig, encoder: Any, out: Path) -> dict[str, Any]:
    import medsec.data
    from medsec.data import data_root
    from medsec.wsi.feature_cache import TensorTiles, extract_features

    assert cfg.bags is not None
    root = Path(cfg.bags.root) if cfg.bags.root else data_root() / "bloodmnist"
    if not (root / "bloodmnist.npz").is_file():
        raise DataError(f"BloodMNIST not found at {root} (expected bloodmnist.npz); set MEDSEC_DATA or bags.root")
    pools = {}
    for split in ("train", "test"):
        ds = medsec.data.create("medmnist", flag="bloodmnist", split=split, root=str(root))
        x = ds.images
        coords = np.stack([np.arange(len(ds)), np.zeros(len(ds), dtype=np.int64)], 1)
        bag = extract_features(encoder, TensorTiles(x), coords, out / "features" / f"bloodmnist-{split}.h5",
                               batch_size=512)
        pools[split] = {"x": x, "y": ds.labels.numpy(), "f": bag.features}
    return pools


def _gen(ctx: RunContext, *parts: Any) -> torch.Generator:
    """The CPU generator of one step of the run (seeded from the run seed and the step's name)."""
    return ctx.generator("/".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts), device="cpu")


def _head_path(out: Path, task: str, head: str) -> Path:
    return out / "heads" / f"{task}-{head}.safetensors"


def _train_head(ctx: RunContext, comp: Any, dim: int, bags: list[torch.Tensor], labels: np.ndarray, path: Path,
                cell: str) -> Any:
    """The trained head of (task, head): loaded from the run folder when a previous run saved
    it (medsec's one checkpoint format), else initialised and trained under the cell's seed."""
    from medsec.models.checkpoint import load_checkpoint, save_checkpoint
    from medsec.wsi.mil import create_head, train_mil

    if path.is_file():
        return load_checkpoint(path, device=ctx.device).eval()
    with ctx.cell(cell):  # the head's initialisation is seeded per (task, head)
        head = create_head(comp.name, dim, 2, **comp.params).to(ctx.device)
    train_mil(head, bags, torch.as_tensor(labels), generator=_gen(ctx, cell), **ctx.cfg.train.model_dump())
    save_checkpoint(head, path, extra={"cell": cell})
    return head.eval()


def _metrics(head: Any, bags: list[torch.Tensor], labels: np.ndarray) -> dict[str, Any]:
    from medsec.wsi.mil import evaluate_mil

    m = evaluate_mil(head, [b.to(_device(head)) for b in bags], torch.as_tensor(labels))
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auroc": m["auroc"],
            "pred": m["pred"].tolist(), "p_pos": m["probs"][:, 1].tolist()}


def _device(module: Any) -> torch.device:
    device: torch.device = next(module.parameters()).device
    return device


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


def _run_bags(ctx: RunContext, encoder: Any, figs: dict[str, np.ndarray]) -> None:
    cfg, st, out = ctx.cfg, ctx.store, ctx.out
    from medsec.wsi.bags import make_bags
    from medsec.wsi.budget import vulnerability_scores
    from medsec.wsi.content import content_correlations, tile_content
    from medsec.wsi.feature_cache import TensorTiles

    assert cfg.bags is not None
    pools = _pools(cfg, encoder, out)
    te = pools["test"]
    sc_path = out / "features" / "vulnerability-test.npy"
    if sc_path.is_file():
        scores = torch.from_numpy(np.load(sc_path))
    else:
        scores = vulnerability_scores(encoder, TensorTiles(te["x"]), _budget_threat(cfg), _gen(ctx, "vuln"),
                                      distance=cfg.attack.distance)
        tmp = sc_path.with_suffix(".tmp.npy")
        np.save(tmp, scores.numpy())
        tmp.replace(sc_path)
    if st.done("content") is None:
        g = _gen(ctx, "content")
        sub = torch.randperm(len(te["x"]), generator=g)[:1000]
        content = tile_content(te["x"][sub])
        corr = content_correlations(scores[sub].numpy(), content)
        by_class = {int(c): float(scores[torch.as_tensor(te["y"] == c)].mean()) for c in np.unique(te["y"])}
        st.put("content", {"n_tiles": int(sub.numel()), "spearman": corr, "vulnerability_by_class": by_class,
                           "vulnerability_mean": float(scores.mean())})
        figs["content_vuln"] = scores[sub].numpy()
        for k, v in content.items():
            figs[f"content_{k}"] = v
    b = cfg.bags
    for task in b.tasks:
        gt = _gen(ctx, "bags", task.name)
        btr = make_bags(pools["train"]["y"], task.positive, b.n_train, b.size_min, b.size_max, b.key_min, b.key_max,
                        generator=gt)
        bte = make_bags(te["y"], task.positive, b.n_test, b.size_min, b.size_max, b.key_min,
                        b.key_max if b.test_key_max is None else b.test_key_max, generator=gt)
        ftr = [pools["train"]["f"][i] for i in btr.indices]
        fte = [te["f"][i] for i in bte.indices]
        heads = {}
        for comp in cfg.heads:
            heads[comp.name] = _train_head(ctx, comp, encoder.dim, ftr, btr.labels,
                                           _head_path(out, task.name, comp.name), f"head/{task.name}/{comp.name}")
            key = f"clean/{task.name}/{comp.name}"
            if st.done(key) is None:
                st.put(key, {"task": task.name, "head": comp.name, **_metrics(heads[comp.name], fte, bte.labels)})
        st.results.setdefault("tasks", {})[task.name] = {"positive": task.positive, "n_train": len(btr), "n_test": len(bte),
                                                   "bag_sizes": [int(min(map(len, bte.indices))), int(max(map(len, bte.indices)))],
                                                   "key_tiles_per_positive_bag": [b.key_min, b.key_max],
                                                   "key_tiles_per_positive_test_bag": [b.key_min, b.key_max if b.test_key_max
                                                                                       is None else b.test_key_max]}
        for attack in cfg.attack.names:
            for rho in cfg.attack.rhos:
                for strategy in cfg.attack.strategies:
                    shared = None
                    for comp in cfg.heads:
                        key = f"attack/{task.name}/{comp.name}/{attack}/{rho:g}/{strategy}"
                        if st.done(key) is not None:
                            continue
                        if strategy == "attention" or shared is None:
                            res = _attack_bags(cfg, encoder, te, bte, fte, attack, rho, strategy,
                                               heads[comp.name] if strategy == "attention" else None,
                                               _gen(ctx, "attack", task.name, attack, rho, strategy,
                                                     comp.name if strategy == "attention" else ""),
                                               scores if strategy == "vulnerability" else None)
                            if strategy != "attention":
                                shared = res
                        else:
                            res = shared
                        clean = st.done(f"clean/{task.name}/{comp.name}")
                        assert clean is not None  # every head's clean cell is finished above
                        m = _metrics(heads[comp.name], res["features"], bte.labels)
                        flips = float(np.mean(np.asarray(m["pred"]) != np.asarray(clean["pred"])))
                        pos = bte.labels == 1
                        st.put(key, {"task": task.name, "head": comp.name, "attack": attack, "rho": rho,
                                     "strategy": strategy, "eps": cfg.attack.eps, "eps_255": cfg.attack.eps * 255,
                                     "norm": cfg.attack.norm, "clean": {k: clean[k] for k in ("accuracy", "balanced_accuracy", "auroc")},
                                     "attacked": {k: m[k] for k in ("accuracy", "balanced_accuracy", "auroc")},
                                     "delta_accuracy": clean["accuracy"] - m["accuracy"], "flip_rate": flips,
                                     "flip_rate_positive": float(np.mean((np.asarray(m["pred"]) != np.asarray(clean["pred"]))[pos])),
                                     **res["summary"], "pred": m["pred"], "selected": res["selected"]})
                        _keep_example(figs, task.name, comp.name, attack, rho, strategy, res, bte, te, heads[comp.name], fte)
        if cfg.defenses.enabled:
            _bag_defenses(ctx, encoder, pools, btr, bte, ftr, fte, heads, task.name)


def _budget_threat(cfg: WSIConfig) -> Any:
    from medsec.types import ThreatModel

    return ThreatModel(cfg.attack.norm, cfg.attack.eps)


def _keep_example(figs: dict[str, np.ndarray], task: str, head: str, attack: str, rho: float, strategy: str,
                  res: dict[str, Any], bte: Any, te: dict[str, Any], head_m: Any, fte: list[torch.Tensor]) -> None:
    """Data of the report's figures: the first positive test bag's mosaic (attention and
    attacked tiles) for the first head, and a few clean/adversarial tiles."""
    tag = f"{task}|{head}|{attack}|{rho:g}|{strategy}"
    if "mosaic_attention" not in figs and strategy == "attention":
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
        figs["mosaic_attention"] = head_m.attention(fte[b]).cpu().numpy()[show]
        figs["mosaic_selected"] = np.flatnonzero(np.isin(show, sel))
        figs["mosaic_key"] = np.flatnonzero(np.isin(show, key))
        figs["mosaic_tag"] = np.asarray(tag)
    if "example_clean" not in figs and res["tiles_clean"].shape[0] >= 1:
        figs["example_clean"] = res["tiles_clean"][:6].numpy()
        figs["example_adv"] = res["tiles_adv"][:6].numpy()
        figs["example_deviation"] = res["deviation"][:6].numpy()
        figs["example_tag"] = np.asarray(tag)


def _bag_defenses(ctx: RunContext, encoder: Any, pools: dict[str, Any], btr: Any, bte: Any,
                  ftr: list[torch.Tensor], fte: list[torch.Tensor], heads: dict[str, Any], task: str) -> None:
    import medsec.defenses
    from medsec.registry import DETECTORS
    from medsec.wsi.defenses import adversarial_finetune, drop_flagged
    from medsec.wsi.mil import create_head

    cfg, st = ctx.cfg, ctx.store
    d = cfg.defenses
    attack, rho = cfg.attack.names[0], d.rho
    te = pools["test"]
    comp = cfg.heads[0]
    head = heads[comp.name]
    strategies = [s for s in ("random", "attention") if s in cfg.attack.strategies] or ["random"]
    attacked = {s: _attack_bags(cfg, encoder, te, bte, fte, attack, rho, s, head if s == "attention" else None,
                                _gen(ctx, "defence-attack", task, s), None) for s in strategies}
    base = {"task": task, "head": comp.name, "attack": attack, "rho": rho}
    for name, params in _purifiers(cfg):
        key = f"defense/{task}/{name}"
        if st.done(key) is not None:
            continue
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
        st.put(key, row)
    if d.outlier_k is not None and st.done(f"defense/{task}/outlier") is None:
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
        st.put(f"defense/{task}/outlier", row)
    if d.finetune_epochs is not None and st.done(f"defense/{task}/adv_finetune") is None:
        g = _gen(ctx, "finetune", task)
        adv_tr = _attack_bags(cfg, encoder, pools["train"], btr, ftr, attack, rho, "random", None, g, None)["features"]
        ft = create_head(comp.name, encoder.dim, 2, **comp.params).to(ctx.device)
        ft.load_state_dict(copy.deepcopy(head.state_dict()))
        adversarial_finetune(ft, ftr, adv_tr, btr.labels, epochs=d.finetune_epochs, lr=cfg.train.lr / 2, generator=g)
        row = {**base, "defense": "adv_finetune", "params": {"epochs": d.finetune_epochs},
               "clean": _metrics(ft, fte, bte.labels)["accuracy"]}
        for s in strategies:
            res = attacked[s] if s == "random" else _attack_bags(cfg, encoder, te, bte, fte, attack, rho, s, ft,
                                                                 _gen(ctx, "defence-attack-ft", task, s), None)
            row[f"attacked_{s}"] = _metrics(ft, res["features"], bte.labels)["accuracy"]
            row[f"undefended_{s}"] = _metrics(head, attacked[s]["features"], bte.labels)["accuracy"]
        st.put(f"defense/{task}/adv_finetune", row)


# --------------------------------------------------------------------------- slides
def _run_slides(ctx: RunContext, encoder: Any, figs: dict[str, np.ndarray], head: Any | None) -> None:
    import medsec.defenses
    from medsec.objectives.feature_deviation import deviation
    from medsec.wsi.budget import WSIBudget, vulnerability_scores
    from medsec.wsi.content import content_correlations, tile_content
    from medsec.wsi.feature_cache import extract_features
    from medsec.wsi.slide import Slide
    from medsec.wsi.slide_attack import attack_slide
    from medsec.wsi.tiling import SlideTiles, tile_grid

    cfg, st, out = ctx.cfg, ctx.store, ctx.out
    sc = cfg.slides
    assert sc is not None
    attack = cfg.attack.names[0]
    for i, p in enumerate(sc.paths):
        slide = Slide(_slide_path(p))
        key = f"slide/{slide.name}"
        if st.done(key) is not None:
            continue
        t0 = time.perf_counter()
        grid = tile_grid(slide, sc.tile_size, level=sc.level, mpp=sc.mpp, min_tissue=sc.min_tissue)
        if len(grid) == 0:
            raise DataError(f"no tissue tile of {sc.tile_size} px in {slide.name}; lower slides.min_tissue or the tile size")
        tiles = SlideTiles(slide, grid)
        bag = extract_features(encoder, tiles, grid.coords, out / "features" / f"slide-{slide.name}.h5", batch_size=32)
        t_enc = time.perf_counter() - t0
        g = _gen(ctx, "slide", slide.name)
        budget = WSIBudget(sc.rho, cfg.attack.eps, cfg.attack.norm)
        scores = vulnerability_scores(encoder, tiles, budget.threat, g, batch_size=32, distance=cfg.attack.distance)
        res = attack_slide(encoder, tiles, bag.features, budget, attack, "vulnerability", generator=g,
                           distance=cfg.attack.distance, scores=scores, **cfg.attack.params.get(attack, {}))
        res_r = attack_slide(encoder, tiles, bag.features, budget, attack, "random", generator=g,
                             distance=cfg.attack.distance, **cfg.attack.params.get(attack, {}))
        p_, s_ = _psnr_ssim(res.tiles_clean, res.tiles_adv)
        content = tile_content(tiles[np.arange(len(grid))]) if len(grid) <= 2000 else None
        row: dict[str, Any] = {
            "slide": slide.name, "dimensions": list(slide.dimensions), "levels": slide.level_count, "mpp": slide.mpp,
            "level": grid.level, "tile_size": grid.tile_size, "read_size": grid.read_size, "n_tiles": len(grid),
            "k": int(res.indices.numel()), "rho": sc.rho, "attack": attack, "eps_255": cfg.attack.eps * 255,
            "deviation_vulnerability": res.deviation.tolist(), "deviation_random": res_r.deviation.tolist(),
            "selected_vulnerability": res.indices.tolist(), "selected_random": res_r.indices.tolist(),
            "psnr": p_, "ssim": s_, "encode_seconds": t_enc, "attack_seconds": res.seconds,
            "vulnerability_mean": float(scores.mean()), "vulnerability_max": float(scores.max()),
        }
        if content is not None:
            row["content_spearman"] = content_correlations(scores.numpy(), content)
        if head is not None and getattr(head, "in_dim", None) == encoder.dim:
            with torch.no_grad():
                a = head.attention(bag.features.to(ctx.device)).cpu()
                pc = torch.softmax(head(bag.features.to(ctx.device)), 0)[1].item()
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
        figs[f"slide{i}_thumb"] = thumb
        figs[f"slide{i}_coords"] = grid.coords
        figs[f"slide{i}_footprint"] = np.asarray([grid.footprint, ds])
        figs[f"slide{i}_scores"] = scores.numpy()
        figs[f"slide{i}_selected"] = res.indices.numpy()
        figs[f"slide{i}_name"] = np.asarray(slide.name)
        figs[f"slide{i}_clean"] = res.tiles_clean[:2].numpy()
        figs[f"slide{i}_adv"] = res.tiles_adv[:2].numpy()
        st.put(key, row)
        slide.close()


# --------------------------------------------------------------------------- entry point
def run(ctx: RunContext) -> None:
    """Run a ``kind: wsi`` config into ``ctx.store`` (finished cells are skipped)."""
    cfg: WSIConfig = ctx.cfg
    st, out = ctx.store, ctx.out
    st.plan(plan(cfg))
    encoder = _encoder(cfg, ctx.device)
    st.update(encoder={"name": cfg.encoder.name, "dim": encoder.dim, "spec": encoder.spec.to_dict()},
              figures="figures.npz")
    fig_path = out / "figures.npz"
    figs: dict[str, np.ndarray] = {}
    if fig_path.is_file():
        with np.load(fig_path, allow_pickle=False) as z:
            figs = {k: z[k] for k in z.files}
    head = None
    if cfg.bags is not None:
        _run_bags(ctx, encoder, figs)
        atomic_save_npz(fig_path, **figs)
        first = cfg.bags.tasks[0].name
        path = _head_path(out, first, cfg.heads[0].name)
        if path.is_file():
            from medsec.models.checkpoint import load_checkpoint

            head = load_checkpoint(path, device=ctx.device).eval()
    if cfg.slides is not None:
        _run_slides(ctx, encoder, figs, head)
        atomic_save_npz(fig_path, **figs)
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

__all__ = ["check", "plan", "run", "summarize"]
