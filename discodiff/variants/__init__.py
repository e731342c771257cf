"""Research variants and ablations that plug into the core by name: the core (latents, model, prior) imports none of
them. Importing this package registers them all; `discodiff/__init__.py` does so, so a config that names one always
finds it.

- `continuous`: continuous latents with a KL term and a diffusion prior (the paper's Table 3 ablation);
- `information`: a term against codebook collapse, log k - I(y; z) (model.regularisers.information);
- `pfgmpp`: PFGM++'s perturbation kernel, a forward process (model.process = "pfgmpp");
- `pointer`, `sets`, `docking`: pointer latents over each example's conditioning set (DisCo-DiffDock's), the
  set-conditioned networks, and their training and sampling path (the dock3d docking analogue, docs/docking.md).

Other variants are named in the network registry (discodiff/networks): the toy's centred MLP and its k-means++
prototypes, the fixed k-means encoder, the U-Net's hierarchical latent groups.
"""
from . import continuous, information, pfgmpp, pointer, sets  # noqa: F401  (registers them)
