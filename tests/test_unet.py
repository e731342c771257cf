"""The image networks: the U-Net backbone (plain, cross-attention / embedding latents, hierarchical) and the ViT
encoder, alone and inside DisCo-Diff. Tiny models on 8-32 px so the file runs in seconds on a CPU."""
from __future__ import annotations

import pytest
import torch

from discodiff.config import ConfigError, ModelConfig
from discodiff.edm import EDMLoss
from discodiff.model import DiscoDiff
from discodiff.networks import build_backbone, build_encoder
from discodiff.networks.unet import UNet
from discodiff.networks.vit import ViTEncoder

pytestmark = [pytest.mark.usefixtures("one_thread")]


TINY = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0,
            channels_per_head=8, latent_dim=16, latent_depth=1, latent_heads=2)
M, K = 4, 8

VARIANTS = {
    "cross_attention": {},
    "embedding": {"latent_injection": "embedding"},
    # decoder attention at 4 px (the middle and the 4x4 blocks) and at 8 px: two groups
    "hierarchical": {"attn_resolutions": (8, 4), "latent_groups": 2},
}


def make_unet(seed=0, res=8, channels=1, num_latents=0, num_classes=0, **kw):
    torch.manual_seed(seed)
    return UNet(res, channels, num_classes=num_classes, num_latents=num_latents,
                codebook_size=K if num_latents else 0, **{**TINY, **kw})


def perturb(nets, names=None, std=0.05, seed=123):
    """Adds the same noise, parameter by parameter name, to every net in `nets`. A fresh U-Net outputs exactly
    zero (EDM's zero-initialised output conv and residual convs), which would make most comparisons vacuous."""
    g = torch.Generator().manual_seed(seed)
    params = [dict(n.named_parameters()) for n in nets]
    with torch.no_grad():
        for name in sorted(names if names is not None else params[0]):
            noise = torch.randn(params[0][name].shape, generator=g) * std
            for p in params:
                p[name].add_(noise)


def random_latents(batch, seed, m=M):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.one_hot(torch.randint(K, (batch, m), generator=g), K).float()


def inputs(batch=3, res=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, res, res, generator=g), torch.randn(batch, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# zero-initialised latent path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fresh_disco_unet_equals_plain_unet(variant):
    kw = VARIANTS[variant]
    plain_kw = {k: v for k, v in kw.items() if not k.startswith("latent_")}
    plain = make_unet(num_latents=0, num_classes=3, **plain_kw)
    disco = make_unet(num_latents=M, num_classes=3, **kw)
    # The same seed gives the plain network's weights exactly; the latent modules come on top.
    plain_sd, disco_sd = plain.state_dict(), disco.state_dict()
    assert set(plain_sd) < set(disco_sd)
    for name, value in plain_sd.items():
        assert torch.equal(value, disco_sd[name]), name
    assert not any("latent" in name or "cross_attn" in name for name in plain_sd)  # m = 0: no latent modules
    zero_projs = [n for n in disco_sd if n.startswith("latent_proj") or ".cross_attn.proj" in n]
    assert zero_projs and all(disco_sd[n].abs().max() == 0 for n in zero_projs)

    x, c_noise = inputs()
    labels = torch.eye(3)[[0, 2, 1]]
    null = torch.tensor([False, True, False])
    with torch.no_grad():
        assert torch.equal(plain(x, c_noise, class_labels=labels),
                           disco(x, c_noise, class_labels=labels, latents=random_latents(3, 0), null_latent=null))
        # ... and still after the shared weights move (the same way), i.e. not only because F starts at zero.
        perturb([plain, disco], names=list(dict(plain.named_parameters())))
        out = plain(x, c_noise, class_labels=labels)
        assert out.abs().max() > 0
        assert torch.equal(out, disco(x, c_noise, class_labels=labels, latents=random_latents(3, 1),
                                      null_latent=null))
        assert torch.equal(out, disco(x, c_noise, class_labels=labels))  # latents=None: the null latent


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_latents_change_output_once_projections_are_nonzero(variant):
    net = make_unet(num_latents=M, **VARIANTS[variant])
    perturb([net])  # every weight, the zero-initialised projections included
    x, c_noise = inputs()
    za, zb = random_latents(3, 0), random_latents(3, 1)
    assert not torch.equal(za, zb)
    with torch.no_grad():
        out_a = net(x, c_noise, latents=za)
        out_b = net(x, c_noise, latents=zb)
        assert (out_a - out_b).abs().amax(dim=(1, 2, 3)).min() > 1e-6  # every sample moves
        # the null latent: the output no longer depends on `latents`, and equals latents=None
        all_null = torch.ones(3, dtype=torch.bool)
        null_a = net(x, c_noise, latents=za, null_latent=all_null)
        assert torch.equal(null_a, net(x, c_noise, latents=zb, null_latent=all_null))
        assert torch.allclose(null_a, net(x, c_noise), atol=1e-6)
        assert not torch.allclose(null_a, out_a)
        # a per-sample mask: only the masked rows switch to the null output
        mixed = net(x, c_noise, latents=za, null_latent=torch.tensor([True, False, False]))
        assert torch.allclose(mixed[0], null_a[0], atol=1e-6) and torch.allclose(mixed[1:], out_a[1:], atol=1e-6)


def test_class_labels_enter_through_the_embedding():
    net = make_unet(num_classes=5)
    perturb([net])
    x, c_noise = inputs()
    with torch.no_grad():
        a = net(x, c_noise, class_labels=torch.eye(5)[[0, 0, 0]])
        b = net(x, c_noise, class_labels=torch.eye(5)[[1, 1, 1]])
        assert (a - b).abs().max() > 1e-6
        # EDM's map_label is bias-free: a dropped label (all zeros) is the same as no label
        assert torch.equal(net(x, c_noise, class_labels=torch.zeros(3, 5)), net(x, c_noise))


# ---------------------------------------------------------------------------------------------------------------
# shapes and resolutions


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("res,mult,attn", [(8, (1, 2), (4,)), (16, (1, 2, 2), (8,)), (28, (1, 2, 2), (14, 7)),
                                           (28, (1, 2, 2, 2), (7,)), (32, (1, 2, 2), (8,))])
def test_shapes(channels, res, mult, attn):
    net = make_unet(res=res, channels=channels, num_latents=2, num_classes=2, channel_mult=mult,
                    attn_resolutions=attn, model_channels=8)
    perturb([net])
    x, c_noise = inputs(batch=2, res=res, channels=channels)
    out = net(x, c_noise, class_labels=torch.eye(2), latents=random_latents(2, 0, m=2))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a scalar c_noise is broadcast over the batch
    assert net(x, c_noise[0]).shape == x.shape


def test_odd_resolution_levels():
    net = make_unet(res=28, channel_mult=(1, 1, 1, 1), attn_resolutions=(7,))
    assert net.resolutions == [28, 14, 7, 4]
    with pytest.raises(ValueError, match="too many"):
        make_unet(res=8, channel_mult=(1, 1, 1, 1, 1))


def test_bad_options():
    with pytest.raises(ValueError, match="latent_injection"):
        make_unet(num_latents=M, latent_injection="concat")
    with pytest.raises(ValueError, match="needs latent_injection='cross_attention'"):
        make_unet(num_latents=M, latent_injection="embedding", latent_groups=2)


# ---------------------------------------------------------------------------------------------------------------
# the hierarchical variant


def test_hierarchical_groups_must_divide_m():
    with pytest.raises(ValueError, match="must divide num_latents"):
        make_unet(num_latents=5, **VARIANTS["hierarchical"])
    with pytest.raises(ValueError, match="needs 3 decoder resolutions"):
        make_unet(num_latents=6, attn_resolutions=(8, 4), latent_groups=3)


def test_hierarchical_wiring():
    net = make_unet(num_latents=M, **VARIANTS["hierarchical"])
    assert all(b.cross_attn is None for b in net.enc.values() if hasattr(b, "cross_attn"))
    groups = {name: b.latent_group for name, b in net.dec.items() if b.cross_attn is not None}
    assert groups == {"4x4_in0": 0, "4x4_block0": 0, "4x4_block1": 0, "8x8_block0": 1, "8x8_block1": 1}
    # group 0's tokens (lowest resolution) do not see group 1's latents
    perturb([net])
    za = random_latents(2, 0)
    zb = za.clone()
    zb[:, M // 2:] = random_latents(2, 5)[:, M // 2:]
    with torch.no_grad():
        ca, cb = net.latent_context(za, None, 2), net.latent_context(zb, None, 2)
    assert torch.equal(ca[:, :M // 2], cb[:, :M // 2]) and not torch.equal(ca[:, M // 2:], cb[:, M // 2:])


# ---------------------------------------------------------------------------------------------------------------
# the ViT encoder


@pytest.mark.parametrize("res,channels,patch", [(8, 1, 2), (28, 1, 8), (32, 3, 4)])
def test_vit_shape_and_gradients(res, channels, patch):
    torch.manual_seed(0)
    vit = ViTEncoder(res, channels, num_latents=M, codebook_size=K, patch_size=patch, width=32, depth=2, heads=4)
    y = torch.randn(5, channels, res, res)
    logits = vit(y)
    assert logits.shape == (5, M, K) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, p in vit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert vit.patch_embed.weight.grad.abs().max() > 0
    # each sample's logits depend on that sample's image only
    with torch.no_grad():
        y2 = y.clone()
        y2[0] += 1
        out2 = vit(y2)
    assert not torch.allclose(out2[0], logits[0].detach()) and torch.allclose(out2[1:], logits[1:].detach(), atol=1e-5)


def clustered_images(per_cluster=8, clusters=K, res=8, seed=0):
    """Images in `clusters` tight, well-separated groups: a random template per group plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(clusters, 1, res, res, generator=g)
    y = templates.repeat_interleave(per_cluster, 0) + 0.05 * torch.randn(clusters * per_cluster, 1, res, res,
                                                                          generator=g)
    return y, torch.arange(clusters).repeat_interleave(per_cluster)


# ---------------------------------------------------------------------------------------------------------------
# inside DisCo-Diff, through the registry


def model_config(num_latents=M, network_extra=None, **kw):
    net = {"name": "unet", **TINY, **(network_extra or {})}
    enc = {"name": "vit", "patch_size": 2, "width": 32, "depth": 1, "heads": 4}
    return ModelConfig(data_shape=[1, 8, 8], num_classes=3, num_latents=num_latents, codebook_size=K,
                       network=net, encoder=enc, **kw)


def test_registry_builds_image_networks():
    cfg = model_config()
    assert isinstance(build_backbone(cfg), UNet) and isinstance(build_encoder(cfg), ViTEncoder)
    with pytest.raises(ConfigError, match="square images"):
        build_backbone(ModelConfig(data_shape=[2], network={"name": "unet"}))
    with pytest.raises(ConfigError, match="must divide num_latents"):
        build_backbone(model_config(network_extra={"attn_resolutions": [8, 4], "latent_groups": 3}))
    with pytest.raises(ConfigError, match="bad network options"):
        build_backbone(ModelConfig(data_shape=[1, 8, 8], network={"name": "unet", "widht": 3}))


def test_discodiff_with_unet_and_vit():
    torch.manual_seed(0)
    plain = DiscoDiff(model_config(num_latents=0))
    torch.manual_seed(0)
    disco = DiscoDiff(model_config())
    perturb([plain.denoiser, disco.denoiser], names=list(dict(plain.denoiser.named_parameters())))
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    z = torch.randint(K, (4, M))
    labels = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        ref = plain.make_denoiser(None, labels)(x, sigma)
        assert torch.equal(disco.make_denoiser(z, labels, guidance=0.0)(x, sigma), ref)
        assert torch.allclose(disco.make_denoiser(z, labels, guidance=1.0)(x, sigma), ref, atol=1e-6)

    # Stage-I training: finite gradients on the denoiser and the encoder. Through the zero-initialised output
    # conv and cross-attention projections, gradients reach the latent transformer and the encoder at step 3.
    torch.manual_seed(1)
    model = DiscoDiff(model_config())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn, gen = EDMLoss(), torch.Generator().manual_seed(0)
    y, y_labels = torch.randn(8, 1, 8, 8) * 0.5, torch.randint(3, (8,))
    for step in range(3):
        opt.zero_grad()
        loss = model.training_loss(y, y_labels, loss_fn=loss_fn, generator=gen)
        assert loss.shape == (8,) and torch.isfinite(loss).all()
        loss.mean().backward()
        for part in (model.denoiser, model.encoder):
            grads = [p.grad for p in part.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
    assert any(p.grad.abs().max() > 0 for p in model.encoder.parameters())
    assert model.denoiser.net.latent_blocks[0].attn.qkv.weight.grad.abs().max() > 0
    # after training, the latents matter
    with torch.no_grad():
        za, zb = torch.zeros(4, M, dtype=torch.long), torch.full((4, M), K - 1)
        assert not torch.equal(model.denoise(x, sigma, z=za), model.denoise(x, sigma, z=zb))


# ---------------------------------------------------------------------------------------------------------------
# attention layout: fused SDPA kernels, and the group norms' epsilon

def _math_backend() -> int:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return 0
    return int(getattr(SDPBackend.MATH, "value", 0))


def _old_split_heads(t, heads):
    """The layout before the fix: the transpose alone, last-dimension stride N."""
    B, C, N = t.shape
    return t.reshape(B, heads, C // heads, N).transpose(-1, -2)


def _old_self_attention(attn, x):
    q, k, v = attn.qkv(attn.norm(x)).flatten(2).chunk(3, dim=1)
    y = torch.nn.functional.scaled_dot_product_attention(*(_old_split_heads(t, attn.heads) for t in (q, k, v)))
    return x + attn.proj(y.transpose(-1, -2).reshape(x.shape))


def _old_cross_attention(attn, x, ctx):
    q = _old_split_heads(attn.q(attn.norm(x)).flatten(2), attn.heads)
    k, v = (_old_split_heads(t, attn.heads) for t in attn.kv(ctx).transpose(1, 2).chunk(2, dim=1))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return x + attn.proj(y.transpose(-1, -2).reshape(x.shape))


def test_attention_heads_are_laid_out_for_fused_kernels():
    """The U-Net's q, k, v have a last-dimension stride of 1, so scaled_dot_product_attention can choose a fused
    kernel (flash / memory-efficient) rather than the math one; the output is the previous layout's."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        pytest.skip("this torch has no torch._fused_sdp_choice")
    net = make_unet(num_latents=M, attn_resolutions=(8, 4))
    perturb([net])
    blocks = [b for part in (net.enc, net.dec) for b in part.values() if getattr(b, "attn", None) is not None]
    assert blocks and all(b.cross_attn is not None for b in blocks)
    g = torch.Generator().manual_seed(0)
    for b in blocks:
        res = b.resolution
        x = torch.randn(2, b.out_channels, res, res, generator=g)
        ctx = torch.randn(2, M, TINY["latent_dim"], generator=g)
        for q, k, v in (b.attn.heads_qkv(x), b.cross_attn.heads_qkv(x, ctx)):
            assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
            assert choose(q, k, v) != _math_backend()
            # the old layout took the math kernel
            assert choose(q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v) == _math_backend()
        with torch.no_grad():
            assert torch.allclose(b.attn(x), _old_self_attention(b.attn, x), atol=1e-5)
            assert torch.allclose(b.cross_attn(x, ctx), _old_cross_attention(b.cross_attn, x, ctx), atol=1e-5)
    # the transformer layers (ViT, latent transformer, prior) were already laid out for fused kernels
    layer = net.latent_blocks[0].attn
    t = torch.randn(2, M, TINY["latent_dim"], generator=g)
    q, k, v = layer.qkv(t).view(2, M, 3, layer.heads, -1).permute(2, 0, 3, 1, 4)
    assert choose(q, k, v) != _math_backend()


def test_attention_runs_under_the_flash_kernel_alone():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        pytest.skip("this torch has no torch.nn.attention.sdpa_kernel")
    net = make_unet(num_latents=M)
    perturb([net])
    x, c_noise = inputs()
    z = random_latents(3, seed=1)
    with torch.no_grad():
        ref = net(x, c_noise, latents=z, null_latent=torch.zeros(3, dtype=torch.bool))
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = net(x, c_noise, latents=z, null_latent=torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(out, ref, atol=1e-5)


def test_norm_eps_option():
    """network.norm_eps sets every group norm's epsilon (1e-6 by default, as before; EDM's is 1e-5)."""
    def eps_of(net):
        return {m.eps for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert eps_of(make_unet(num_latents=M)) == {1e-6}
    assert eps_of(make_unet(num_latents=M, norm_eps=1e-5)) == {1e-5}
    cfg = ModelConfig(data_shape=[1, 8, 8], num_latents=M, codebook_size=K,
                      network={"name": "unet", **TINY, "norm_eps": 1e-5}, encoder={"name": "vit", "patch_size": 4})
    assert eps_of(build_backbone(cfg)) == {1e-5}
    for bad in (0, -1e-5, "small"):
        cfg.network["norm_eps"] = bad
        with pytest.raises(ConfigError, match="norm_eps"):
            build_backbone(cfg)


# ---------------------------------------------------------------------------------------------------------------
# the paper's ImageNet-64 configuration (the imagenet64 preset), counted on the meta device

def test_imagenet64_preset_sizes():
    """The plain U-Net has exactly EDM's DhariwalUNet parameter count at its ImageNet-64 settings (295,899,267), and
    the DisCo-Diff parts have the sizes the review measured."""
    from discodiff.config import preset_config
    from discodiff.sizes import parameter_counts
    plain = preset_config("imagenet64", {"model": {"num_latents": 0}}).model
    assert plain.data_shape == [3, 64, 64] and plain.num_classes == 1000
    assert parameter_counts(plain) == {"denoiser backbone": 295_899_267, "latent path": 0, "encoder": 0, "prior": 0}
    cfg = preset_config("imagenet64")
    counts = parameter_counts(cfg.model, cfg.prior_train.network)
    assert counts["denoiser backbone"] == 295_899_267
    assert round(counts["latent path"] / 1e5) == 240     # 24.0M: latent transformer + 16 cross-attentions
    assert round(counts["encoder"] / 1e5) == 860         # ViT-B/8
    assert round(counts["prior"] / 1e5) == 384           # 12 x 512


def test_imagenet64_needs_the_users_data(tmp_path, capsys):
    from conftest import run_cli
    run = tmp_path / "r"
    code, _, err = run_cli(["train", "--preset", "imagenet64", "--run-dir", str(run)], capsys)
    lines = [line for line in err.strip().splitlines() if line]
    assert code not in (0, None) and len(lines) == 1 and "--data" in err and "Traceback" not in err
    assert not run.exists()
    # a dry run needs no data: the preset's shape and classes, the counts on stderr, nothing written
    code, out, err = run_cli(["train", "--preset", "imagenet64", "--run-dir", str(run), "--latents", "0",
                              "--dry-run"], capsys)
    assert code in (0, None), err
    import json
    cfg = json.loads(out)
    assert cfg["model"]["network"]["norm_eps"] == 1e-5 and cfg["model"]["num_latents"] == 0
    assert "295,899,267" in err and not run.exists()
