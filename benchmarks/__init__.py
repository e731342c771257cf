"""The benchmarks: one script per claim of the paper or of the library, each writing a JSON report to
benchmarks/results/ (kept in the repository, with the command line and the git commit that produced it).

    toy2d.py               the 2D experiment (paper Fig. 3/4): EDM against DisCo-Diff on 8 Gaussians
    images.py              EDM against DisCo-Diff by FID on an image preset, at several step counts
    samplers.py            FID against NFE per sampler, and the hybrid sampler (paper App. D)
    throughput.py          training and sampling cost of the latents
    pfgmpp.py              DisCo-Diff on PFGM++ (paper Table 1)
    finetune.py            fine-tuning a plain EDM model into DisCo-Diff, against training from scratch
    continuous_latents.py  continuous against discrete latents (paper Table 3)
    sweep.py               where the latents pay off: network width x sampler steps x training seeds
    fid_speed.py           the FID detector's speed and agreement on each backend (docs/fid.md)
    feature_spaces.py      what Inception and the data set's own classifier see of known image changes (docs/fid.md)
    common.py              what several scripts share (reports, FID ratios, latent information, run folders)
    research/              one-off studies and tools built on these (see research/__init__.py)

How to run them: as files, from any folder, as the docs print them, e.g.
`.venv/bin/python benchmarks/images.py --preset digits` or `.venv/bin/python benchmarks/research/guidance.py`.
Each script's one `sys.path` line puts the repository root first, so that `from benchmarks.common import ...`
resolves (`discodiff` itself comes from the virtual environment's install); `python -m benchmarks.images` works too.

What imports what: the scripts at this level import benchmarks.common and never another script; research/ scripts
may also import the sweep (benchmarks.sweep: its run layout, commands, classifier and reports), whose runs they study.
"""
