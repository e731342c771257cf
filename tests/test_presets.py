"""Presets say what they are: the paper's configuration, or ours with each deviation and its reason."""
import json

from conftest import run_cli

from discodiff.config import PRESET_CARDS, PRESETS, preset_config


def test_every_preset_has_a_card_and_every_card_a_preset():
    assert set(PRESET_CARDS) == set(PRESETS)
    for name, card in PRESET_CARDS.items():
        assert card.paper or card.deviations, f"{name} is not the paper's configuration and names no deviation"
        assert all(what and why for what, why in card.deviations)


def test_a_cards_m_and_k_are_its_presets():
    """The card's summary is what `discodiff presets` and the README show: an "m = N, k = K" there that the preset no
    longer has (as when fashion16 moved from 4 latents to 8) would mislead."""
    import re

    checked = 0
    for name, card in PRESET_CARDS.items():
        found = re.search(r"\bm = (\d+), k = (\d+)", card.summary)
        if found:
            m = preset_config(name).model
            assert (m.num_latents, m.codebook_size) == tuple(map(int, found.groups())), name
            checked += 1
    assert checked >= 6


def test_the_paper_toy_is_the_paper_configuration():
    cfg = preset_config("toy2d-paper")
    m = cfg.model
    assert PRESET_CARDS["toy2d-paper"].paper
    assert (m.num_latents, m.codebook_size, m.tau, m.hard, m.p_null) == (1, 8, 1.0, True, 0.1)
    assert m.network["depth"] == 4 and m.network["centred"] and m.network["latent_embedding"] is False
    assert m.encoder["depth"] == 3 and not m.encoder["prototypes"] and not m.regularisers
    assert (cfg.train.lr, cfg.sample.sampler, cfg.sample.steps) == (1e-3, "heun", 50)


def test_presets_command_lists_every_preset_with_its_sizes(capsys):
    code, out, err = run_cli(["presets", "--json"], capsys)
    assert code == 0, err
    rows = {r["preset"]: r for r in json.loads(out)}
    assert set(rows) == set(PRESETS)
    assert rows["imagenet64"]["paper"] and rows["imagenet64"]["latents"].startswith("10x100 straight-through")
    assert rows["imagenet64"]["injection"] == "cross-attention"
    assert rows["digits"]["injection"] == "embedding" and not rows["digits"]["paper"]
    assert rows["mnist"]["latents"] == "10x32 soft +information"
    assert rows["fashion16-kmeans"]["encoder_params"] == 0 < rows["fashion16"]["encoder_params"]
    code, out, _ = run_cli(["presets"], capsys)
    assert code == 0 and "toy2d-paper" in out and "the paper's configuration" in out
