"""dock3d: a seeded docking ANALOGUE (not molecular docking), made in about a second, for the paper's third domain
(DisCo-DiffDock, pointer latents over a conditioning set; docs/docking.md).

A receptor is a point set in 3D: 24 to 64 points of 4 types around a globule of radius 6 A, with 2 to 4 concave
pockets (dents) whose centres lie 5 A from its centre. A ligand is a rigid shape of 5 to 12 atoms (3 types) from a
small seeded library; a complex puts one ligand in one pocket, chosen uniformly, with its centroid at the pocket's
centre and a uniformly random rotation. Each receptor's pose distribution therefore has one mode per pocket (times
the turns of the shape); a pointer latent's job is to name the pocket.

Splits: `train` (complexes on the training receptors), `seen` (fresh complexes on the training receptors) and
`unseen` (complexes on held-out receptors never seen in training: the paper's "unseen proteins").

Every array, with its meaning, is in `ARRAYS`; `Dock3D.save` writes them to an .npz together with that text (the
`doc_<name>` entries), so a user can recompute every measure from the file (`success`, `rmsd_aligned`, ...).
Distances are in Angstrom-like units ("A"); coordinates are centred on the receptor's centre.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import ArrayDataset, register
from ..config import DataConfig
from ..errors import DataError

MAX_RECEPTOR = 64        # receptor points, padded to this
MAX_LIGAND = 12          # ligand atoms, padded to this
MAX_POCKETS = 4
RECEPTOR_TYPES = 4       # 0, 1: surface; 2, 3: more frequent in pocket linings (70 %)
LIGAND_TYPES = 3
GLOBULE_RADIUS = 6.0
POCKET_DEPTH = 5.0       # pocket centres lie this far from the receptor's centre
CUP_RADIUS = 2.4         # the pocket lining's distance from the pocket's centre
LINING_POINTS = 5        # lining points per pocket
SHAPE_EXTENT = 1.6       # every ligand atom lies within this of its centroid
SUCCESS_CENTROID = 1.0   # success: the sample's centroid within 1 A of a pocket centre ...
SUCCESS_RMSD = 0.5       # ... and its RMSD to the reference shape after alignment below 0.5 A

ARRAYS = {
    "receptor_pos": "float32 [R, 64, 3]: receptor points (A), centred on the receptor; rows past receptor_size are 0",
    "receptor_type": "int64 [R, 64]: point types 0-3 (2, 3 mostly line pockets); -1 past receptor_size",
    "receptor_size": "int64 [R]: points of each receptor (24-64)",
    "pocket_centre": "float32 [R, 4, 3]: pocket centres (A); rows past num_pockets are 0",
    "num_pockets": "int64 [R]: pockets of each receptor (2-4)",
    "receptor_split": "int64 [R]: 0 training receptor, 1 held-out receptor (never seen in training)",
    "shape_pos": "float32 [S, 12, 3]: the ligand library's reference shapes, centroid at 0; rows past shape_size 0",
    "shape_type": "int64 [S, 12]: ligand atom types 0-2; -1 past shape_size",
    "shape_size": "int64 [S]: atoms of each shape (5-12)",
    "complex_receptor": "int64 [C]: each complex's receptor (row of receptor_*)",
    "complex_shape": "int64 [C]: each complex's ligand shape (row of shape_*)",
    "complex_pocket": "int64 [C]: the pocket it sits in (row of pocket_centre[receptor])",
    "complex_rotation": "float32 [C, 3, 3]: its rotation R: ligand_pos = pocket_centre + shape_pos @ R.T",
    "ligand_pos": "float32 [C, 12, 3]: the bound ligand's atoms (A); rows past the shape's size are 0",
    "complex_split": "int64 [C]: 0 train, 1 seen (new complexes, training receptors), 2 unseen (held-out receptors)",
}
SPLITS = {"train": 0, "seen": 1, "unseen": 2}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (QR of a Gaussian matrix with the signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_shape(rng: np.random.Generator, n: int) -> np.ndarray:
    """A rigid 'molecule' of n atoms: a self-avoiding random walk of bond length 1 (atoms >= 0.9 apart), redrawn
    until it fits within SHAPE_EXTENT of its centroid; centroid at 0."""
    while True:
        pos = [np.zeros(3)]
        for _ in range(n - 1):
            for _try in range(50):
                anchor = pos[rng.integers(len(pos))]
                cand = anchor + _unit(rng.standard_normal(3))
                if min(np.linalg.norm(cand - p) for p in pos) >= 0.9:
                    pos.append(cand)
                    break
        if len(pos) < n:
            continue
        pos = np.array(pos) - np.mean(pos, 0)
        if np.linalg.norm(pos, axis=1).max() <= SHAPE_EXTENT:
            return pos


def make_receptor(rng: np.random.Generator):
    """(points [n, 3], types [n], pocket centres [p, 3]) of one receptor."""
    n = int(rng.integers(24, MAX_RECEPTOR + 1))
    p = int(rng.integers(2, MAX_POCKETS + 1))
    while True:  # pocket directions at least 70 degrees apart
        dirs = _unit(rng.standard_normal((p, 3)))
        cos = dirs @ dirs.T - 2 * np.eye(p)
        if cos.max() < math.cos(math.radians(70)):
            break
    centres = POCKET_DEPTH * dirs
    pts, types = [], []
    for d, c in zip(dirs, centres):  # the lining: a cup around the centre, open towards the outside
        k = 0
        while k < LINING_POINTS:
            u = _unit(rng.standard_normal(3))
            if u @ d <= 0.2:
                pts.append(c + CUP_RADIUS * u)
                types.append(int(rng.integers(2, 4)) if rng.random() < 0.7 else int(rng.integers(0, 2)))
                k += 1
    while len(pts) < n:  # the surface, away from the pockets' mouths
        u = _unit(rng.standard_normal(3))
        if (dirs @ u).max() < math.cos(math.radians(32)):
            pts.append(GLOBULE_RADIUS * u * rng.uniform(0.95, 1.05))
            types.append(int(rng.integers(0, 2)) if rng.random() < 0.85 else int(rng.integers(2, 4)))
    order = rng.permutation(n)  # no information in the order of the points
    return np.array(pts)[order], np.array(types)[order], centres


@dataclass
class Dock3D:
    """The arrays of `ARRAYS`, as numpy arrays (attributes of the same names)."""
    receptor_pos: np.ndarray
    receptor_type: np.ndarray
    receptor_size: np.ndarray
    pocket_centre: np.ndarray
    num_pockets: np.ndarray
    receptor_split: np.ndarray
    shape_pos: np.ndarray
    shape_type: np.ndarray
    shape_size: np.ndarray
    complex_receptor: np.ndarray
    complex_shape: np.ndarray
    complex_pocket: np.ndarray
    complex_rotation: np.ndarray
    ligand_pos: np.ndarray
    complex_split: np.ndarray

    def save(self, path) -> None:
        """All arrays in one .npz, each with its documentation as a string entry doc_<name>."""
        arrays = {name: getattr(self, name) for name in ARRAYS}
        docs = {f"doc_{name}": np.array(text) for name, text in ARRAYS.items()}
        np.savez(path, **arrays, **docs, doc=np.array(__doc__))

    @classmethod
    def load(cls, path) -> "Dock3D":
        with np.load(path) as f:
            return cls(**{name: f[name] for name in ARRAYS})

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DataError(f"unknown dock3d split {split!r}; choose from: {', '.join(SPLITS)}")
        return np.flatnonzero(self.complex_split == SPLITS[split])


def generate(seed: int = 0, *, receptors: int = 200, unseen_receptors: int = 40, shapes: int = 8,
             train_per_receptor: int = 8, eval_per_receptor: int = 4) -> Dock3D:
    """The data set, a function of its arguments only (numpy's PCG64 seeded with `seed`). `receptors` training
    receptors carry `train_per_receptor` training complexes and `eval_per_receptor` 'seen' ones each; the
    `unseen_receptors` held-out receptors carry `eval_per_receptor` 'unseen' complexes each."""
    if receptors < 1 or unseen_receptors < 1 or shapes < 1:
        raise DataError("dock3d needs at least one training receptor, one held-out receptor and one shape")
    rng = np.random.default_rng(seed)
    S = shapes
    shape_pos = np.zeros((S, MAX_LIGAND, 3), np.float32)
    shape_type = np.full((S, MAX_LIGAND), -1, np.int64)
    shape_size = np.zeros(S, np.int64)
    for s in range(S):
        n = int(rng.integers(5, MAX_LIGAND + 1))
        shape_pos[s, :n] = make_shape(rng, n)
        shape_type[s, :n] = rng.integers(0, LIGAND_TYPES, n)
        shape_size[s] = n
    R = receptors + unseen_receptors
    rec_pos = np.zeros((R, MAX_RECEPTOR, 3), np.float32)
    rec_type = np.full((R, MAX_RECEPTOR), -1, np.int64)
    rec_size = np.zeros(R, np.int64)
    centres = np.zeros((R, MAX_POCKETS, 3), np.float32)
    num_pockets = np.zeros(R, np.int64)
    for r in range(R):
        pts, types, c = make_receptor(rng)
        rec_pos[r, :len(pts)], rec_type[r, :len(pts)], rec_size[r] = pts, types, len(pts)
        centres[r, :len(c)], num_pockets[r] = c, len(c)
    receptor_split = (np.arange(R) >= receptors).astype(np.int64)
    rows = []  # (receptor, split)
    for r in range(receptors):
        rows += [(r, 0)] * train_per_receptor + [(r, 1)] * eval_per_receptor
    for r in range(receptors, R):
        rows += [(r, 2)] * eval_per_receptor
    C = len(rows)
    cr = np.array([r for r, _ in rows], np.int64)
    csplit = np.array([s for _, s in rows], np.int64)
    cshape = rng.integers(0, S, C)
    cpocket = np.array([rng.integers(0, num_pockets[r]) for r in cr], np.int64)
    rot = np.stack([random_rotation(rng) for _ in range(C)]).astype(np.float32)
    lig = np.zeros((C, MAX_LIGAND, 3), np.float32)
    for i in range(C):
        n = shape_size[cshape[i]]
        lig[i, :n] = centres[cr[i], cpocket[i]] + shape_pos[cshape[i], :n] @ rot[i].T
    return Dock3D(rec_pos, rec_type, rec_size, centres, num_pockets, receptor_split, shape_pos, shape_type,
                  shape_size, cr, cshape, cpocket, rot, lig, csplit)


# ---- batches ---------------------------------------------------------------------------------------------------

def batch(data: Dock3D, idx) -> dict[str, torch.Tensor]:
    """The complexes `idx` as padded tensors: the conditioning set (rec_pos [B, 64, 3], rec_type [B, 64] (0 where
    padded), rec_mask [B, 64] bool), the ligand's conditioning (lig_ref [B, 12, 3] its reference shape, lig_type,
    lig_mask) and the target y [B, 12, 3] (the bound pose; 0 where padded); pockets [B, 4, 3], num_pockets [B],
    index [B] (the complexes' rows)."""
    idx = np.asarray(idx, np.int64)
    r, s = data.complex_receptor[idx], data.complex_shape[idx]
    rec_type = data.receptor_type[r]
    lig_type = data.shape_type[s]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return {"rec_pos": t(data.receptor_pos[r]), "rec_type": t(np.maximum(rec_type, 0)), "rec_mask": t(rec_type >= 0),
            "lig_ref": t(data.shape_pos[s]), "lig_type": t(np.maximum(lig_type, 0)), "lig_mask": t(lig_type >= 0),
            "y": t(data.ligand_pos[idx]), "pockets": t(data.pocket_centre[r]), "num_pockets": t(data.num_pockets[r]),
            "index": t(idx)}


# ---- measures --------------------------------------------------------------------------------------------------

def rmsd_aligned(pos: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMSD between poses pos [B, n, 3] and reference shapes ref [B, n, 3] over the atoms in mask [B, n], after the
    best rigid motion of ref onto pos (Kabsch: centroids matched, proper rotation). [B]."""
    pos, ref, w = pos.double(), ref.double(), mask.double().unsqueeze(-1)
    n = w.sum(1).clamp_min(1)
    p = (pos - (pos * w).sum(1, keepdim=True) / n.unsqueeze(1)) * w
    q = (ref - (ref * w).sum(1, keepdim=True) / n.unsqueeze(1)) * w
    h = q.transpose(1, 2) @ p                         # [B, 3, 3]
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    e = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    rot = vt.transpose(1, 2) @ e @ u.transpose(1, 2)  # maps q onto p
    diff = (q @ rot.transpose(1, 2) - p) * w
    return (diff.square().sum((1, 2)) / n.squeeze(-1)).sqrt()


def centroid(pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(pos.dtype).unsqueeze(-1)
    return (pos * w).sum(1) / w.sum(1).clamp_min(1)


def nearest_pocket(pos: torch.Tensor, mask: torch.Tensor, pockets: torch.Tensor, num_pockets: torch.Tensor):
    """(index of the pocket nearest to each pose's centroid [B], its distance [B])."""
    c = centroid(pos.double(), mask)
    d = (c.unsqueeze(1) - pockets.double()).norm(dim=-1)
    valid = torch.arange(pockets.shape[1]).unsqueeze(0) < num_pockets.unsqueeze(1)
    d = d.masked_fill(~valid, math.inf)
    dist, which = d.min(1)
    return which, dist


def pose_measures(pos: torch.Tensor, b: dict) -> dict[str, torch.Tensor]:
    """Per pose [B]: success (bool: centroid within 1 A of a pocket centre and RMSD after alignment below 0.5 A),
    rmsd (after alignment to the reference shape), centroid_dist (to the nearest pocket centre), pocket (its
    index)."""
    rmsd = rmsd_aligned(pos, b["lig_ref"], b["lig_mask"])
    pocket, dist = nearest_pocket(pos, b["lig_mask"], b["pockets"], b["num_pockets"])
    return {"success": (dist < SUCCESS_CENTROID) & (rmsd < SUCCESS_RMSD), "rmsd": rmsd, "centroid_dist": dist,
            "pocket": pocket}


def coverage_tv(pocket: np.ndarray, receptor: np.ndarray, num_pockets: np.ndarray) -> float:
    """Pocket coverage: the total variation between the sampled pockets' frequencies and the data's (uniform over
    each receptor's pockets), per receptor, averaged over receptors. pocket, receptor: [N] per sample;
    num_pockets: [N] of each sample's receptor. 0: every pocket as often as in the data; near 1: one pocket only."""
    tvs = []
    for r in np.unique(receptor):
        sel = receptor == r
        k = int(num_pockets[sel][0])
        freq = np.bincount(pocket[sel], minlength=k)[:k] / sel.sum()
        tvs.append(0.5 * np.abs(freq - 1.0 / k).sum())
    return float(np.mean(tvs))


# ---- the loader for `discodiff train --preset dock3d` -------------------------------------------------------------

class SetDataset(ArrayDataset):
    """An ArrayDataset of kind "sets": `x` is each training complex's target (the bound ligand, [N, 36] = 12 atoms x
    3, padded) so that the run machinery sees a data shape; `data` holds the whole Dock3D with its conditioning
    sets, which the set-conditioned trainer (variants/sets.py) reads instead."""

    def __init__(self, data: Dock3D, name: str = "dock3d"):
        idx = data.indices("train")
        super().__init__(torch.from_numpy(data.ligand_pos[idx].reshape(len(idx), -1)), kind="sets", name=name)
        self.data = data


def options_of(cfg: DataConfig) -> dict:
    allowed = {"seed", "receptors", "unseen_receptors", "shapes", "train_per_receptor", "eval_per_receptor"}
    unknown = set(cfg.options) - allowed
    if unknown:
        raise DataError(f"unknown dock3d option(s) {', '.join(sorted(unknown))}; choose from: "
                        f"{', '.join(sorted(allowed))}")
    return dict(cfg.options)


@register("dock3d")
def load_dock3d(cfg: DataConfig) -> SetDataset:
    return SetDataset(generate(**options_of(cfg)))
