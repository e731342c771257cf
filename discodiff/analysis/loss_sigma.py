"""The denoising loss as a function of the noise level (paper Fig. 7a and Fig. 10).

At each fixed sigma the EDM-weighted loss  lambda(sigma) * E_y E_n ||D(y + n, sigma, z) - y||^2  (per pixel), with
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, is averaged over the same images y and the same
noise n for every model. DisCo-Diff is conditioned on the encoder's argmax latents of each image, z = E(y) (the
"oracle" latents: what the denoiser saw in training, without the Gumbel noise); the baseline (m = 0) gets no z.
The paper finds the latents lower the loss mostly at large sigma, where p(y | x) is most multimodal, and that
the curves meet at small sigma, where x alone pins y down.

Each run is measured with the loss it trained with, `EDMLoss.for_model(model.config)` at the fixed sigma: the
noise n comes from the run's perturbation kernel, sigma eps for EDM and PFGM++'s heavier-tailed kernel for a run
with model.process = "pfgmpp" (built from the same Gaussian eps, plus one Gamma draw per image).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..edm import EDMLoss, sigma_bins
from .common import AnalysisError, chunks


def noise_generator(seed: int, index: int) -> torch.Generator:
    """The generator of the index-th noise level's noise: the same for every model, any batch size."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def noise_for_sigma(shape, seed: int, index: int) -> torch.Tensor:
    """Unit Gaussian noise [N, *shape] for the index-th noise level: eps, the first draw of `noise_generator`, and
    for EDM's kernel the whole noise, n = sigma eps."""
    return torch.randn(tuple(shape), generator=noise_generator(seed, index))


@torch.no_grad()
def weighted_loss(model, y: torch.Tensor, sigma: float, generator: torch.Generator, *, latents: str = "oracle",
                  class_labels=None, batch: int = 256) -> torch.Tensor:
    """Per-image stage-I loss of `model` at the fixed noise level `sigma`, [N]: `EDMLoss.for_model(model.config)`,
    lambda(sigma) * mean_pixels (D(y + n, sigma, z) - y)^2 with n drawn from the run's own kernel by `generator`
    (on the CPU, for all N images at once, so the values do not depend on `batch`; the network runs `batch` images
    at a time).

    latents: "oracle" (z = argmax E(y); nothing for a model with m = 0) or "null" (the learned null latent, i.e. the
    unconditional model that guidance uses)."""
    device = next(model.parameters()).device
    y = y.detach().float().cpu()
    labels = None if class_labels is None else torch.as_tensor(class_labels).cpu()

    def denoise(x, s):  # the network over `batch` images at a time, each with its own image's latents
        out = []
        for i, xb in chunks(x, batch):
            yb = y[i:i + len(xb)].to(device)
            z = model.encode(yb) if (latents == "oracle" and model.num_latents) else None
            lb = None if labels is None else labels[i:i + len(xb)].to(device)
            out.append(model.denoise(xb.to(device), s[i:i + len(xb)].to(device), z=z, class_labels=lb).float().cpu())
        return torch.cat(out)

    loss = EDMLoss.for_model(model.config)
    return loss(denoise, y, sigma=torch.full((len(y),), float(sigma)), generator=generator).float()


def loss_vs_sigma(models: Mapping[str, torch.nn.Module], y: torch.Tensor, *, class_labels=None, sigmas=None,
                  num_sigmas: int = 16, seed: int = 0, batch: int = 256, null_curves: bool = True,
                  progress=None) -> dict:
    """The loss curve of each model over the same images `y` [N, *shape] and the same seeded noise.

    Returns {"sigma": [S], "num_images": N, "seed", "curves": {name: {"loss": [S], "stderr": [S], "latents",
    "process"}}}, each model's loss its own training loss (`weighted_loss`).
    With `null_curves`, each model with latents also gets "<name> (null z)": the same network given the learned
    null latent, a within-model view of what the latents add. `progress(message)` is called once per noise level.
    """
    if not models:
        raise AnalysisError("loss against sigma needs at least one run")
    shapes = {name: list(m.config.data_shape) for name, m in models.items()}
    if any(s != list(y.shape[1:]) for s in shapes.values()):
        raise AnalysisError(f"the runs model data of different shapes than the images {list(y.shape[1:])}: {shapes}")
    sigmas = [float(s) for s in (sigma_bins(num_sigmas) if sigmas is None else sigmas)]
    if any(s <= 0 for s in sigmas):
        raise AnalysisError(f"noise levels must be positive, got {sigmas}")
    variants = [(name, name, "oracle" if m.num_latents else "none") for name, m in models.items()]
    if null_curves:
        variants += [(f"{name} (null z)", name, "null") for name, m in models.items() if m.num_latents]
    losses = {label: [] for label, _, _ in variants}
    for j, sigma in enumerate(sigmas):
        for label, name, kind in variants:  # each model on the same draws, through its own kernel
            losses[label].append(weighted_loss(models[name], y, sigma, noise_generator(seed, j),
                                               latents="null" if kind == "null" else "oracle",
                                               class_labels=class_labels, batch=batch))
        if progress is not None:
            progress(f"sigma {sigma:.4g} ({j + 1}/{len(sigmas)}): " + ", ".join(
                f"{label} {float(v[-1].mean()):.4f}" for label, v in losses.items()))
    curves = {}
    for label, name, kind in variants:
        per = torch.stack(losses[label])  # [S, N]
        curves[label] = {"latents": kind, "process": models[name].config.process, "loss": per.mean(1).tolist(),
                         "stderr": (per.std(1) / max(per.shape[1], 1) ** 0.5).tolist()}
    return {"sigma": sigmas, "num_images": int(y.shape[0]), "seed": seed, "curves": curves}


def loss_ratios(result: dict, reference: str) -> dict:
    """loss(model) / loss(reference) at each sigma, for every other curve: below 1 where a model does better."""
    ref = result["curves"][reference]["loss"]
    return {label: [a / b if b > 0 else float("nan") for a, b in zip(c["loss"], ref)]
            for label, c in result["curves"].items() if label != reference}
