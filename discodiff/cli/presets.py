"""`discodiff presets`: every named configuration, what it is, and what it weighs."""
from __future__ import annotations

import click


def preset_rows() -> list[dict]:
    """One row per preset: its card (config.PRESET_CARDS) with the resolved model's latents, injection and
    parameter counts (built on the meta device: no memory, no random draws)."""
    import dataclasses

    from ..config import PRESET_CARDS, PRESETS, preset_config
    from ..sizes import parameter_counts

    rows = []
    for name in PRESETS:
        card = PRESET_CARDS[name]
        cfg = preset_config(name)
        m = dataclasses.replace(cfg.model, data_shape=list(card.data_shape), num_classes=card.num_classes)
        counts = parameter_counts(m, cfg.prior_train.network)
        net = m.network
        if m.num_latents == 0:
            injection = "-"
        elif net.get("name") == "unet":
            injection = net.get("latent_injection", "cross_attention").replace("_", "-")
        else:
            injection = "centre only" if net.get("latent_embedding") is False else "embedding"
        relaxation = "straight-through" if m.hard else "soft"
        rows.append({"preset": name, "shape": "x".join(map(str, card.data_shape)), "classes": card.num_classes,
                     "latents": f"{m.num_latents}x{m.codebook_size} {relaxation}" + (
                         f" +{'+'.join(m.regularisers)}" if m.regularisers else ""),
                     "encoder": m.encoder.get("name"), "injection": injection,
                     "denoiser_params": counts["denoiser backbone"] + counts["latent path"],
                     "encoder_params": counts["encoder"], "prior_params": counts["prior"],
                     "paper": card.paper, "summary": card.summary,
                     "deviations": [{"what": w, "why": y} for w, y in card.deviations], "trained": card.trained})
    return rows


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.1f}k"


@click.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def presets(as_json):
    """List the presets: data shape, latents, injection, parameters, whether it is the paper's configuration (and if
    not, how it deviates and why), and where it was trained at length."""
    rows = preset_rows()
    if as_json:
        import json
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("preset", "data", "latents", "encoder", "injection", "denoiser", "encoder", "prior", "paper", "trained")
    table = [header] + [(r["preset"], r["shape"] + (f" c{r['classes']}" if r["classes"] else ""), r["latents"],
                         r["encoder"], r["injection"], _millions(r["denoiser_params"]),
                         _millions(r["encoder_params"]), _millions(r["prior_params"]),
                         "yes" if r["paper"] else "no", "yes" if r["trained"] else "no") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    click.echo("")
    for r in rows:
        click.echo(f"{r['preset']}: {r['summary']}" + (" (the paper's configuration)" if r["paper"] else ""))
        for d in r["deviations"]:
            click.echo(f"  - {d['what']}: {d['why']}")
        if r["trained"]:
            click.echo(f"  trained: {r['trained']}")
