"""Batched guidance and latent features computed once per trajectory (model.make_denoiser), on tiny untrained
models whose weights are perturbed so that the latents and the class really change the output."""
from __future__ import annotations

import pytest
import torch

from discodiff.cli.sample import describe_passes
from discodiff.sampling import nfe
from discodiff.config import ModelConfig
from discodiff.edm import EDMLoss
from discodiff.latents import one_hot
from discodiff.model import DiscoDiff
from discodiff.pipeline import generate
from discodiff.prior import ARPrior
from discodiff.sampling import guided, karras_sigmas


pytestmark = [pytest.mark.usefixtures("one_thread")]


UNET = dict(name="unet", model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0,
            channels_per_head=8, latent_dim=16, latent_depth=1, latent_heads=2)
VIT = dict(name="vit", patch_size=2, width=32, depth=1, heads=4)
MLP_ENC = dict(name="mlp", hidden=32)
BACKBONES = {
    "unet_cross_attention": ([1, 8, 8], UNET, VIT),
    "unet_embedding": ([1, 8, 8], {**UNET, "latent_injection": "embedding"}, VIT),
    "unet_hierarchical": ([1, 8, 8], {**UNET, "attn_resolutions": (8, 4), "latent_groups": 2}, VIT),
    "mlp": ([2], dict(name="mlp", hidden=32, emb_dim=16), MLP_ENC),
    "mlp_centred": ([2], dict(name="mlp", hidden=32, emb_dim=16, centred=True), MLP_ENC),
}
M, K, CLASSES, B = 4, 8, 3, 5


def make_model(backbone: str, num_latents=M, num_classes=CLASSES) -> DiscoDiff:
    shape, net, enc = BACKBONES[backbone]
    if not num_latents:  # the plain network: no latent options
        net = {k: v for k, v in net.items() if not k.startswith("latent_")}
    cfg = ModelConfig(data_shape=shape, num_classes=num_classes, num_latents=num_latents, codebook_size=K,
                      network=dict(net), encoder=dict(enc))
    torch.manual_seed(0)
    model = DiscoDiff(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh U-Net outputs exactly 0 and ignores z: move every weight a little
        for p in model.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def two_pass_denoiser(model: DiscoDiff, z, class_labels, guidance=0.0, class_guidance=0.0):
    """The reference: make_denoiser as it was before batching, one `denoise` call per pass, latents embedded at
    every call, combined by sampling.guided (latent guidance first, then class guidance on the guided result)."""
    def cond(x, s):
        return model.denoise(x, s, z=z, class_labels=class_labels)

    def no_latent(x, s):
        return model.denoise(x, s, z=None, class_labels=class_labels)

    def no_class(x, s):
        return model.denoise(x, s, z=z, class_labels=None)

    d = guided(cond, no_latent, guidance) if (guidance and model.num_latents) else cond
    if class_guidance and model.config.num_classes and class_labels is not None:
        d = guided(d, no_class, class_guidance)
    return d


def inputs(model: DiscoDiff, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *model.config.data_shape, generator=g)
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 20.0])
    z = torch.randint(K, (B, M), generator=g)
    labels = torch.randint(CLASSES, (B,), generator=g)
    return x, sigma, z, labels


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("weights", [(1.5, 0.0), (0.0, 2.0), (1.5, 2.0), (-0.5, 0.7)])
def test_batched_guidance_equals_the_two_pass_form(backbone, weights):
    """One network call on the stacked [cond; null latent; no class] batch gives the separate passes' result.

    Not bitwise in general: the batched call runs its matmuls and convolutions on 2B or 3B rows, and a BLAS may
    block (and so sum) a larger batch differently, which moves the last bits of float32 (relative 1e-7). The
    guidance combination (1 + w) D - w D' amplifies that by a few, and D is O(1) here, so atol 1e-5 leaves a
    margin of ~10x over rounding while a wrong pass (another z, class or sigma) would be off by O(0.1)."""
    model = make_model(backbone)
    x, sigma, z, labels = inputs(model)
    w, wc = weights
    with torch.no_grad():
        ref = two_pass_denoiser(model, z, labels, w, wc)(x, sigma)
        cond = model.denoise(x, sigma, z=z, class_labels=labels)
        assert (ref - cond).abs().max() > 1e-2  # the guidance does something, so the comparison is not vacuous
        for batched in (True, False):
            denoise = model.make_denoiser(z, labels, guidance=w, class_guidance=wc, batched=batched)
            for _ in range(2):  # the first call fills the latent-feature cache, the second reads it
                torch.testing.assert_close(denoise(x, sigma), ref, atol=1e-5, rtol=1e-5)
            # a scalar sigma, as some callers pass, is broadcast over the stacked batch too
            torch.testing.assert_close(denoise(x, torch.tensor(1.0)),
                                       two_pass_denoiser(model, z, labels, w, wc)(x, torch.tensor(1.0)),
                                       atol=1e-5, rtol=1e-5)
    # with gradients enabled (the features are then computed afresh at each call) the result is the same
    torch.testing.assert_close(model.make_denoiser(z, labels, guidance=w, class_guidance=wc)(x, sigma), ref,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["unet_embedding", "mlp"])
def test_guidance_interval_guides_only_inside_it(backbone):
    """guidance_interval=(lo, hi): the guided D where lo < sigma <= hi, the conditional D elsewhere, per sample;
    outside it at every sample, one network pass of the conditional batch (no stacked call)."""
    model = make_model(backbone)
    x, sigma, z, labels = inputs(model)            # sigma = 0.05, 0.3, 1.0, 4.0, 20.0
    interval = (0.3, 4.0)                          # holds 1.0 and 4.0; 0.3 itself is outside (lo is open)
    with torch.no_grad():
        guided_all = model.make_denoiser(z, labels, guidance=1.5, class_guidance=2.0)(x, sigma)
        cond = model.denoise(x, sigma, z=z, class_labels=labels)
        out = model.make_denoiser(z, labels, guidance=1.5, class_guidance=2.0, guidance_interval=interval)(x, sigma)
        inside = torch.tensor([False, False, True, True, False])
        torch.testing.assert_close(out[inside], guided_all[inside], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[~inside], cond[~inside], atol=1e-5, rtol=1e-5)
        assert (out[~inside] - guided_all[~inside]).abs().max() > 1e-2  # the two differ there: not vacuous
        # a scalar sigma outside the interval: a single pass, bitwise the conditional denoiser
        calls = []
        hook = model.denoiser.register_forward_hook(lambda mod, args, output: calls.append(args[0].shape[0]))
        try:
            denoise = model.make_denoiser(z, labels, guidance=1.5, guidance_interval=interval)
            assert torch.equal(denoise(x, torch.tensor(10.0)), model.make_denoiser(z, labels)(x, torch.tensor(10.0)))
            denoise(x, torch.tensor(2.0))
        finally:
            hook.remove()
        assert calls == [B, B, 2 * B]  # outside: the conditional batch; inside: the stacked one


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_without_guidance_the_cached_denoiser_is_bitwise_denoise(backbone):
    """Without guidance there is one pass of the same batch: caching the latent features changes no bit."""
    model = make_model(backbone)
    x, sigma, z, labels = inputs(model)
    with torch.no_grad():
        denoise = model.make_denoiser(z, labels)
        for _ in range(2):
            assert torch.equal(denoise(x, sigma), model.denoise(x, sigma, z=z, class_labels=labels))
        assert torch.equal(model.make_denoiser(None, labels)(x, sigma), model.denoise(x, sigma, class_labels=labels))
        # guidance weights with nothing to act on leave the single pass: no class given, or m = 0
        assert torch.equal(model.make_denoiser(z, None, class_guidance=3.0)(x, sigma), model.denoise(x, sigma, z=z))
    plain = make_model(backbone, num_latents=0)
    with torch.no_grad():
        assert torch.equal(plain.make_denoiser(None, labels, guidance=2.0)(x, sigma),
                           plain.denoise(x, sigma, class_labels=labels))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_precomputed_latent_features_equal_the_inline_ones(backbone):
    """denoise with latent_features computed beforehand = denoise computing them itself: outputs and gradients
    bitwise, for conditional rows, null rows and a mix (the training path always computes them inline)."""
    model = make_model(backbone).train()
    x, sigma, z, labels = inputs(model)
    latents = one_hot(z, K).requires_grad_(True)  # as the encoder's straight-through sample would be
    null = torch.tensor([False, True, False, False, True])

    def run(precomputed: bool):
        model.zero_grad()
        latents.grad = None
        feats = model.latent_features(latents, null, B) if precomputed else None
        out = model.denoise(x, sigma, latents=latents, null_latent=null, class_labels=labels, latent_features=feats)
        out.square().sum().backward()
        return out.detach(), latents.grad.clone(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.grad is not None}

    out_a, dlat_a, grads_a = run(False)
    out_b, dlat_b, grads_b = run(True)
    assert torch.equal(out_a, out_b)
    if backbone == "mlp_centred":
        # z reaches D along three paths here (embedding, centre, scale): computing the embedding first changes the
        # order in which autograd sums their gradients into `latents`, hence its last bit. (Training never
        # precomputes, so its gradients are untouched; the weights' gradients below are bitwise equal anyway.)
        torch.testing.assert_close(dlat_a, dlat_b, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(dlat_a, dlat_b)
    assert dlat_a.abs().max() > 0  # gradients reach the latents (hence the encoder)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_training_computes_the_latent_features_inline_as_latent_features_does():
    """training_loss never takes a cache: its loss equals EDMLoss over the denoiser given latent_features computed
    by hand from the same Gumbel sample, bitwise, with dropout on (in the latent transformer and the U-Net) and
    the same random numbers drawn from the generator and from torch's global generator."""
    from discodiff.latents import gumbel_softmax, null_mask
    model = make_model("unet_cross_attention").train()
    model.config.p_class_drop = 0.3
    for module in model.denoiser.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.2
    loss_fn, cfg = EDMLoss(), model.config
    y, labels = torch.randn(6, 1, 8, 8) * 0.5, torch.randint(CLASSES, (6,))

    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    loss = model.training_loss(y, labels, loss_fn=loss_fn, generator=gen)
    after = (torch.rand(4, generator=gen), torch.rand(4))

    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    latents = gumbel_softmax(model.encoder(y), cfg.tau, hard=cfg.hard, generator=gen)
    drop = null_mask(6, cfg.p_null, generator=gen)
    keep = torch.rand(6, generator=gen) >= cfg.p_class_drop
    classes = torch.nn.functional.one_hot(labels, CLASSES).float() * keep[:, None]
    feats = model.latent_features(latents, drop, 6)
    by_hand = loss_fn(model.denoiser, y, generator=gen, latents=latents, null_latent=drop, class_labels=classes,
                      latent_features=feats)
    assert torch.equal(loss, by_hand)
    assert all(torch.equal(a, b) for a, b in zip(after, (torch.rand(4, generator=gen), torch.rand(4))))


class CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


@pytest.mark.parametrize("backbone", ["unet_cross_attention", "unet_embedding", "mlp"])
def test_latent_tokens_are_computed_once_per_generate_call(backbone):
    """z is fixed along the trajectory: the latent embedding (and the U-Net's latent transformer after it) runs
    once per `generate` call, with or without guidance (the null latent's tokens ride in the same call), while
    the network itself runs once per sampler step (Heun, 4 steps: 7 calls)."""
    model = make_model(backbone)
    prior = ARPrior.for_model(model.config, {"depth": 1, "width": 16, "heads": 2}).eval()
    net = model.denoiser.net
    embed, network = CallCounter(net.latent_embed), CallCounter(net)
    blocks = CallCounter(net.latent_blocks[0]) if hasattr(net, "latent_blocks") else None
    for w, wc in [(0.0, 0.0), (1.0, 0.0), (1.0, 2.0)]:
        embed.calls = network.calls = 0
        if blocks:
            blocks.calls = 0
        generate(model, range(3), karras_sigmas(4), prior=prior, class_labels=1, guidance=w, class_guidance=wc)
        assert embed.calls == 1, (w, wc)
        assert blocks is None or blocks.calls == 1
        assert network.calls == nfe("heun", 4) == 7  # guidance batches its passes: no extra calls
    for counter in (embed, network, blocks):
        if counter:
            counter.handle.remove()


def test_generate_with_guidance_matches_the_two_pass_sampler():
    """A whole guided trajectory (Heun, 4 steps) against the same sampler over the two-pass reference."""
    from discodiff.sampling import StackedGenerator, sample_heun
    model = make_model("unet_cross_attention")
    z = torch.randint(K, (3, M))
    sigmas = karras_sigmas(4)
    with torch.no_grad():
        x, _ = generate(model, [7, 8, 9], sigmas, z=z, class_labels=2, guidance=1.0, class_guidance=1.5)
        gen = StackedGenerator([7, 8, 9])
        gen.rand([M])
        noise = gen.randn(model.config.data_shape) * sigmas[0].float()
        ref = sample_heun(two_pass_denoiser(model, z, torch.full((3,), 2), 1.0, 1.5), noise, sigmas)
    # The trajectory starts at sigma = 80, where float32 rounds x at ~1e-5 absolute; each step's last-bit
    # differences (see above), amplified by the guidance weights, are carried to the end: 1e-3 is ample.
    torch.testing.assert_close(x, ref, atol=1e-3, rtol=1e-4)


def test_network_evaluations_are_counted_with_guidance():
    """`sample`'s count: the paper's NFE counts the conditional and each unconditional evaluation; the network is
    called once per denoiser evaluation, on a batch 2x or 3x larger with guidance."""
    assert describe_passes(18, 35) == "18 steps = 35 network evaluations per sample"
    assert describe_passes(18, 70, 2) == ("18 steps = 70 network evaluations per sample (35 network calls on a "
                                          "doubled batch: guidance)")
    assert "(35 network calls on a tripled batch: guidance)" in describe_passes(18, 105, 3)
    # guidance_weights says which passes make_denoiser runs, so the printed count follows the model
    disco, plain = make_model("mlp"), make_model("mlp", num_latents=0, num_classes=0)
    assert disco.guidance_weights(1.0, 2.0, class_labels=1) == (1.0, 2.0)
    assert disco.guidance_weights(1.0, 2.0, class_labels=None) == (1.0, 0.0)
    assert plain.guidance_weights(1.0, 2.0, class_labels=1) == (0.0, 0.0)
    assert [disco.guidance_passes(1.0, 2.0, 1), disco.guidance_passes(0.0, 2.0, None), plain.guidance_passes(1, 2, 1)] \
        == [3, 1, 1]
