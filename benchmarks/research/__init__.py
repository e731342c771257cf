"""Research scripts: studies of one question each, and tools for the sweep's reports; not claims of the paper.

    guidance.py             why latent guidance hurts on digits, and where it helps (on the sweep's runs)
    latent_class.py         does the FID gain follow what the latents say about the class? (on the sweep's runs)
    encoder_objectives.py   screens encoder objectives by how much of the class the latents name
    latent_injection.py     how the latents enter the U-Net, and penalties against codebook collapse
    prior_fit.py            how well stage II fits the latent tuples, across prior settings
    compare_sweeps.py       the FID ratio against NFE of several sweep reports, side by side
    toy2d_ablation.py       mode separation of the toy's codes under stage-I options (docs/toy2d.md)

Their reports stay in benchmarks/results/. Scripts that need options since removed from the package
(encoder_objectives.py, latent_injection.py, prior_fit.py) say so in their docstring: they ran at commit 8b0f46c,
where those options exist, and are kept as the record of how their results were made.
"""
