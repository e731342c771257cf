"""Codebook usage of each latent, and pictures of what a code stands for.

Over the dataset's encoder latents z = argmax E(y): per latent position, the counts of each of the k codes, their
perplexity exp(H) (k when every code is used equally, 1 when one code takes everything) and the dead codes (never
chosen). A latent with perplexity near 1 carries no information; the paper's latents encode global appearance
(layout, shape, style), which the pictures show: samples that share one z (rows), and dataset images grouped by
the code of one latent position (rows = codes). On labelled data, class_information says how much of the class
the latents name: whether they split the data by kind, as class labels would, or by something else.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from ..data import to_uint8
from ..latents import codebook_usage, gumbel_softmax
from ..pipeline import generate_batches, sample_latents, sampler_from_name, shared_latents
from ..sampling import karras_sigmas
from .common import chunks, generation_labels, require_discrete, require_latents, require_prior


def encoder_logits(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The encoder's logits [N, m, k] of every image (for continuous latents: its outputs), on the CPU."""
    require_latents(model, "the encoder's latents")
    device = next(model.parameters()).device
    return model.encode_all(x.to(device), batch).cpu()


def encoder_latents(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """z = argmax E(y) [N, m] for every image, on the CPU (for continuous latents: the posterior mean [N, D])."""
    return model.latent_mode(encoder_logits(model, x, batch))


def _perplexity(counts) -> float:
    total = sum(counts)
    p = [c / total for c in counts if c]
    return math.exp(-sum(q * math.log(q) for q in p))


def usage_report(z: torch.Tensor, codebook_size: int) -> dict:
    """Per-latent perplexity, codes used, dead codes and counts; and the same for whole tuples z."""
    u = codebook_usage(z, codebook_size)
    tuples = Counter(tuple(row) for row in z.tolist())
    return {
        "num": int(z.shape[0]), "num_latents": int(z.shape[1]), "codebook_size": codebook_size,
        "perplexity": u["perplexity"], "codes_used": u["codes_used"],
        "dead_codes": [codebook_size - c for c in u["codes_used"]], "counts": u["counts"],
        "mean_perplexity": float(sum(u["perplexity"]) / len(u["perplexity"])),
        "distinct_tuples": len(tuples), "tuple_perplexity": _perplexity(list(tuples.values())),
        "possible_tuples": codebook_size ** int(z.shape[1]),
        "top_tuples": [{"z": list(t), "count": c} for t, c in tuples.most_common(10)],
    }


def marginal_tv(a: dict, b: dict) -> list[float]:
    """Total-variation distance between two reports' per-latent code distributions (0: identical marginals)."""
    out = []
    for ca, cb in zip(a["counts"], b["counts"]):
        sa, sb = sum(ca), sum(cb)
        out.append(0.5 * sum(abs(x / sa - y / sb) for x, y in zip(ca, cb)))
    return out


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Total variation between the normalised histograms `a` and `b` (counts of the same cells)."""
    return float(0.5 * (a / a.sum() - b / b.sum()).abs().sum())


def pairwise_tv(za: torch.Tensor, zb: torch.Tensor, codebook_size: int) -> list[float]:
    """For every pair of latent positions i < j, the total variation between the joint code distributions of
    (z_i, z_j) in `za` and in `zb` ([N, m] each): what the marginals cannot see of a prior's fit."""
    k, m = codebook_size, za.shape[1]

    def joint(z, i, j):
        return torch.bincount(z[:, i] * k + z[:, j], minlength=k * k).double()

    return [_tv(joint(za, i, j), joint(zb, i, j)) for i in range(m) for j in range(i + 1, m)]


def unseen_share(z: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of the rows of `z` whose whole tuple never occurs in `reference`."""
    seen = {tuple(r) for r in reference.tolist()}
    return sum(tuple(r) not in seen for r in z.tolist()) / max(len(z), 1)


def prior_fit(z_prior: torch.Tensor, z_data: torch.Tensor, z_data_again: torch.Tensor, codebook_size: int) -> dict:
    """How well prior draws `z_prior` reproduce the encoder's latents on the data `z_data` (z ~ Cat(softmax E(y)),
    what the prior is fitted to), per latent (marginals), per pair of latents and per whole tuple (the share of
    prior tuples the data never produce). `z_data_again`, a second draw of the encoder's latents on the same data,
    gives the same figures between two samples of the target itself: the floor that a finite sample sets."""
    k = codebook_size
    data_usage = codebook_usage(z_data, k)

    def figures(z):
        pair = pairwise_tv(z, z_data, k)
        return {"marginal_tv": marginal_tv(codebook_usage(z, k), data_usage),
                "pairwise_tv_mean": float(sum(pair) / max(len(pair), 1)), "pairwise_tv_max": max(pair, default=0.0),
                "unseen_share": unseen_share(z, z_data), "distinct_tuples": len({tuple(r) for r in z.tolist()})}

    return {"prior": figures(z_prior), "floor": figures(z_data_again), "num": len(z_prior),
            "data_distinct_tuples": len({tuple(r) for r in z_data.tolist()})}


def class_information(z: torch.Tensor, labels: torch.Tensor, codebook_size: int, *, test_share: float = 1 / 6,
                      seed: int = 0, iterations: int = 100) -> dict:
    """What the latents z [N, m] say about the images' class `labels` [N]: per latent, the mutual information
    I(class; z_i) in bits (plug-in, from the joint counts), next to H(class), its ceiling; and for the whole tuple,
    the held-out accuracy of a linear probe (multinomial logistic regression on the one-hot codes, fitted on all
    but a seeded `test_share` of the images), next to always guessing the commonest class. A latent that names
    the class has I = H(class) and accuracy 1; one that splits the data by something else has I near 0."""
    z, y = z.long().cpu(), labels.long().cpu()
    if len(z) != len(y):
        raise ValueError(f"{len(z)} latent tuples but {len(y)} labels")
    classes = int(y.max()) + 1
    p_y = torch.bincount(y, minlength=classes).double() / len(y)
    h_class = float(-(p_y[p_y > 0] * p_y[p_y > 0].log2()).sum())
    mutual = []
    for i in range(z.shape[1]):
        joint = torch.bincount(z[:, i] * classes + y, minlength=codebook_size * classes).double()
        joint = (joint / len(y)).view(codebook_size, classes)
        outer = joint.sum(1, keepdim=True) * p_y  # p(z_i) p(class)
        cells = joint > 0
        mutual.append(float((joint[cells] * (joint[cells] / outer[cells]).log2()).sum()))

    features = torch.nn.functional.one_hot(z, codebook_size).flatten(1).float()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_share * len(y)))
    test, train = order[:n_test], order[n_test:]
    probe = torch.nn.Linear(features.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        fit = torch.nn.functional.cross_entropy(probe(features[train]), y[train])
        loss = fit + 1e-4 * probe.weight.square().sum()  # keeps the weights finite where codes separate classes
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        accuracy = float((probe(features[test]).argmax(1) == y[test]).float().mean())
    return {"class_entropy_bits": h_class, "mutual_information_bits": mutual,
            "probe_accuracy": accuracy, "majority_accuracy": float((y[test] == y[train].mode().values).float().mean()),
            "classes": classes, "num_test": int(n_test)}


@torch.no_grad()
def codebook_analysis(model, prior, x: torch.Tensor, *, prior_samples: int = 0, seed: int = 0,
                      batch: int = 512, labels: torch.Tensor | None = None) -> dict:
    """Usage reports over the images `x`: "encoder" of the argmax latents, "encoder_sampled" of z ~ Cat(softmax E(y))
    (what stage II fits the prior to), "confidence" the mean top probability of each latent; with `prior_samples`
    > 0 and a `prior` (not None), "prior" of that many draws from it, and "prior_vs_encoder_tv", the per-latent
    total variation between the prior's marginals and the sampled encoder latents' (0 for a perfect prior); with the
    images' class `labels`, "class" of class_information(z, labels)."""
    require_discrete(model, "codebook usage")
    logits = encoder_logits(model, x, batch)
    k = model.config.codebook_size
    z = logits.argmax(-1)
    g = torch.Generator().manual_seed(seed)
    z_sampled = gumbel_softmax(logits, 1.0, hard=True, generator=g).argmax(-1)
    out = {"encoder": usage_report(z, k), "encoder_sampled": usage_report(z_sampled, k),
           "confidence": logits.softmax(-1).amax(-1).mean(0).tolist(), "z": z}
    if labels is not None:
        out["class"] = class_information(z, labels, k, seed=seed)
    if prior_samples and prior is not None:
        seeds = list(range(seed, seed + prior_samples))
        zp = torch.cat([sample_latents(model, prior, c, class_labels=generation_labels(model, c)).cpu()
                        for _, c in chunks(seeds, 4096)])
        out["prior"] = usage_report(zp, k)
        out["prior_vs_encoder_tv"] = marginal_tv(out["encoder_sampled"], out["prior"])
    return out


def images_by_code(images: torch.Tensor, z: torch.Tensor, position: int, cols: int = 8,
                   max_rows: int = 16) -> tuple[torch.Tensor, list[int]]:
    """Dataset images grouped by the code of latent `position`: up to `max_rows` codes (most used first), each a row
    of up to `cols` images having that code (rows padded with mid grey). Returns (uint8 [rows * cols, ...], codes)."""
    codes = [c for c, _ in Counter(z[:, position].tolist()).most_common(max_rows)]
    rows = []
    for c in codes:
        members = images[z[:, position] == c][:cols]
        pad = torch.full((cols - len(members), *images.shape[1:]), 128, dtype=images.dtype)
        rows.append(torch.cat([members, pad]))
    return torch.cat(rows), codes


@torch.no_grad()
def samples_by_latent(model, prior, rows: int = 8, cols: int = 8, *, seed: int = 0, steps: int = 18,
                      sampler: str = "heun", guidance: float = 0.0, batch: int = 256,
                      sampler_options: dict | None = None, guidance_interval: tuple[float, float] | None = None,
                      prior_temperature: float = 1.0, hybrid=None, autoguide=None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 samples [rows * cols, ...]: row r shares one z (`prior`'s draw for its first seed), the columns differ
    in their noise only, as `discodiff sample --grid-by-latent` does. Returns (images, z of each row [rows, m]).
    `sampler_options` go to the sampler (S_churn, restart's intervals); the rest to `generate`."""
    require_latents(model, "samples grouped by latent")
    require_prior(model, prior, "samples grouped by latent")
    seeds = list(range(seed, seed + rows * cols))
    row_seeds = seeds[::cols]
    labels = generation_labels(model, row_seeds)
    z = shared_latents(model, prior, seeds, cols, class_labels=labels, temperature=prior_temperature)
    labels = None if labels is None else labels.repeat_interleave(cols)  # a row keeps its class too
    sigmas = karras_sigmas(steps, device=next(model.parameters()).device)
    out = [to_uint8(x).cpu()
           for _, x, _ in generate_batches(model, seeds, sigmas, batch=batch, z=z, class_labels=labels,
                                           sampler=sampler_from_name(sampler, **(sampler_options or {})),
                                           guidance=guidance, guidance_interval=guidance_interval,
                                           prior_temperature=prior_temperature, hybrid=hybrid, autoguide=autoguide)]
    return torch.cat(out), z[::cols].cpu()
