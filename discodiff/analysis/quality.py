"""FID of generated samples, for the analyses that compare sampling settings (oracle, guidance, nfe).

One reference (the training images' detector statistics) serves every FID of a run; `reference_stats` computes it
once and caches it as an .npz with a small JSON note of what it was computed from, so a later call with the same
data and detector reuses it. Samples are streamed through the detector batch by batch (`accumulate_stats`, as
`discodiff fid gen` does), so no images are kept. Every FID here is at a small number of samples N; FID is biased
upward at small N, so compare only numbers computed at the same N (the results always carry it).

Besides the FID, each result has a feature-space diversity: tr(Sigma_gen) / tr(Sigma_ref), the total variance of the
samples' detector features relative to the data's (below 1: less varied than the data), which shows what guidance
trades for quality.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import to_uint8
from ..metrics.fid import FIDStats, accumulate_stats, iter_batches, scores, stats_of_images
from ..pipeline import generate_sharded, sampler_from_name
from ..sampling import karras_sigmas, nfe
from .common import AnalysisError, generation_labels, require_image_model, require_prior

REF_NOTE_SUFFIX = ".json"
DETECTOR_BATCH = 32


def _ref_note(path: Path) -> Path:
    return path.with_name(path.name + REF_NOTE_SUFFIX)


def cached_reference(cache: Path, describe: dict) -> FIDStats | None:
    """The statistics in `cache` if its note says they were computed from what `describe` says, else None."""
    cache = Path(cache)
    if not (cache.is_file() and _ref_note(cache).is_file()):
        return None
    try:
        note = json.loads(_ref_note(cache).read_text())
    except json.JSONDecodeError:
        return None
    return FIDStats.load(cache) if note == describe else None


def reference_stats(images_uint8: torch.Tensor, detector, *, cache: Path | None = None, describe: dict | None = None,
                    batch: int = DETECTOR_BATCH, progress: bool = False) -> tuple[FIDStats, bool]:
    """(FIDStats of all the given uint8 images, whether they came from the cache).

    With `cache`, an existing file is reused when its note matches `describe` (what the images are and which
    detector saw them) and the number of images; otherwise the statistics are computed and written there with
    the note."""
    note = {"num": int(len(images_uint8)), **(describe or {})}
    if cache is not None:
        stats = cached_reference(cache, note)
        if stats is not None:
            return stats, True
    stats = stats_of_images(images_uint8, detector, batch=batch, progress=progress, desc="reference features")
    if cache is not None:
        stats.save(cache)
        _ref_note(Path(cache)).write_text(json.dumps(note, indent=2) + "\n")
    return stats, False


def diversity(stats: FIDStats, ref: FIDStats) -> float:
    """tr(Sigma) of the samples' features over that of the reference."""
    return float(np.trace(stats.sigma) / np.trace(ref.sigma))


def sample_batches(model, prior, seeds: Sequence[int], *, z: torch.Tensor | None = None, class_labels=None,
                   steps: int = 18, sampler: str = "heun", guidance: float = 0.0, batch: int = 128,
                   prior_temperature: float = 1.0, sampler_options: dict | None = None, hybrid=None,
                   guidance_interval: tuple[float, float] | None = None, bf16: bool = False, autoguide=None):
    """uint8 sample batches [n, C, H, W] on the CPU, one per `batch` seeds (under torchrun the processes share the
    seeds and rank 0 alone yields the batches, the same ones: `pipeline.generate_sharded`; `bf16`: the network
    under bfloat16 autocast). `z` [N, m] fixes the latents (else
    `prior` draws them); `class_labels` [N] fixes the classes (else seed % num_classes for a class-conditional
    model); `sampler_options` go to the sampler (restart's intervals), `hybrid` and `autoguide` (autoguidance.py)
    to `generate`. A sample depends on
    its seed only, not on `batch` (see pipeline.generate)."""
    seeds = list(seeds)
    device = next(model.parameters()).device
    labels = generation_labels(model, seeds) if class_labels is None else class_labels
    for _, x, _ in generate_sharded(model, seeds, karras_sigmas(steps, device=device), batch=batch, z=z,
                                    class_labels=labels, sampler=sampler_from_name(sampler, **(sampler_options or {})),
                                    prior=prior, guidance=guidance, guidance_interval=guidance_interval,
                                    prior_temperature=prior_temperature, hybrid=hybrid, autoguide=autoguide,
                                    **({"bf16": True} if bf16 else {})):
        yield to_uint8(x).cpu()


class FIDCache(dict):
    """Results of `sample_fid` keyed by everything that decides them, so one process never measures the same
    samples twice (the benchmark's oracle, guidance and nfe rows share settings)."""


def sample_fid(model, prior, seeds: Sequence[int], ref: FIDStats, detector, *, z: torch.Tensor | None = None,
               latents: str = "prior", class_labels=None, steps: int = 18, sampler: str = "heun",
               guidance: float = 0.0, batch: int = 128, progress: bool = False, desc: str = "sampling + features",
               cache: FIDCache | None = None, model_key=None, bootstrap: int = 0,
               sampler_options: dict | None = None, hybrid=None,
               guidance_interval: tuple[float, float] | None = None, prior_temperature: float = 1.0,
               autoguide=None, samples: dict | None = None) -> dict:
    """FID (± its bootstrap std over `bootstrap` resamples), KID (± std) and diversity of one sample per seed,
    latents from `prior` unless `z` is given. `latents` names where `z` came from ("prior" when z is None), for the
    record and the cache key; `model_key` tells models apart in the cache (default: the ids of the model and the
    prior); `sampler_options` go to the sampler (e.g. S_churn, restart's intervals), `hybrid` (second model,
    switch sigma) to `generate` (name the pair in `model_key`: the key records only the switch sigma);
    `guidance_interval` (lo, hi) limits the guidance to lo < sigma <= hi; `prior_temperature` scales the prior's
    draws; `autoguide` (autoguidance.Autoguide, or (weak model, w[, interval])) guides with a weak model, whose
    passes "network_passes" counts too (name the weak model in `model_key`: the key then records only its
    settings). In the classifier's features (a detector with `class_balance`, metrics/classifier.py) the result
    adds the class balance: "class_tv", "confidence" and the class frequencies. `samples`, a dict, keeps the uint8
    samples under their settings, so a second call with the same settings and another detector (another feature
    space) samples nothing."""
    from ..autoguidance import as_autoguide

    require_image_model(model, "FID")
    autoguide = as_autoguide(autoguide)
    if z is None:
        require_prior(model, prior, "sampling")
    if len(seeds) < 2:
        raise AnalysisError(f"FID needs at least 2 samples, got {len(seeds)}")
    who = model_key if model_key is not None else (id(model), id(prior))
    head = (who, tuple(seeds), latents, steps, sampler, float(guidance),
            None if class_labels is None else tuple(torch.as_tensor(class_labels).tolist()))
    more = ()
    if sampler_options:  # (left out of the key when absent, so earlier caches stay valid)
        more += (tuple(sorted((k, repr(v)) for k, v in sampler_options.items())),)
    if hybrid is not None:
        more += (("hybrid switch sigma", float(hybrid[1])),)
    if guidance_interval is not None:
        more += (("guidance interval", *map(float, guidance_interval)),)
    if prior_temperature != 1.0:
        more += (("prior temperature", float(prior_temperature)),)
    if autoguide is not None:
        weak = id(autoguide.model) if model_key is None else None  # (else `model_key` names the weak model too)
        more += (("autoguidance", weak, float(autoguide.weight), autoguide.interval, autoguide.latents),)
    key = head + (bootstrap,) + more  # (this order keeps the disk caches of earlier runs valid)
    if cache is not None and key in cache:
        return dict(cache[key])
    t0 = time.perf_counter()
    drawn = head + more  # (what decides the samples: the key less its bootstrap count)
    if samples is not None and drawn in samples:
        source, kept = samples[drawn], None
    else:
        source = sample_batches(model, prior, seeds, z=z, class_labels=class_labels, steps=steps,
                                sampler=sampler, guidance=guidance, batch=batch, sampler_options=sampler_options,
                                hybrid=hybrid, guidance_interval=guidance_interval,
                                prior_temperature=prior_temperature, autoguide=autoguide)
        kept = None if samples is None else []  # (the samples are held in memory only when asked to keep them)
        if kept is not None:
            source = (kept.append(images) or images for images in source)
    batches = (piece for images in source for piece in iter_batches(images, DETECTOR_BATCH))  # Inception: small
    stats = accumulate_stats(batches, detector, num=len(seeds), progress=progress, desc=desc)
    if kept is not None:  # (kept only once complete: an interrupted call keeps nothing)
        samples[drawn] = kept
    evaluations = nfe(sampler, steps, **(sampler_options or {}))
    result = {**scores(stats, ref, bootstrap=bootstrap), "diversity": diversity(stats, ref), "num": len(seeds),
              "latents": latents if model.num_latents else "none", "steps": steps, "sampler": sampler,
              "sampler_options": dict(sampler_options or {}), "guidance": float(guidance), "nfe": evaluations,
              # at most, with an interval; autoguidance adds one pass of the weak model per evaluation
              "network_passes": evaluations * (model.guidance_passes(guidance) + (autoguide is not None)),
              "autoguidance": 0.0 if autoguide is None else float(autoguide.weight),
              "guidance_interval": None if guidance_interval is None else list(map(float, guidance_interval)),
              "prior_temperature": float(prior_temperature),
              "seconds": round(time.perf_counter() - t0, 2)}
    if hasattr(detector, "class_balance") and ref.features is not None:  # the classifier's features (docs/fid.md)
        result.update(detector.class_balance(stats.features, ref.features, ref))
    if progress:
        spread = f" ± {result['fid_std']:.4f}" if bootstrap > 1 else ""
        kid = f", KID {result['kid']:.5f}" if result.get("kid") is not None else ""
        print(f"{desc}: FID {result['fid']:.4f}{spread}{kid} over {len(seeds)} samples ({result['seconds']:.0f} s)",
              file=sys.stderr, flush=True)
    if cache is not None:
        cache[key] = dict(result)
    return result
