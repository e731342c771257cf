"""The stage-I loop's GPU-scale pieces, checked on the CPU: dropout seeded per rank and step (so a resumed run equals
an uninterrupted one, dropout included), gradient accumulation equal to one large batch, the embedding kept in
float32 under autocast, the backend policy, torch.compile giving the same results, and a short run whose latents
become informative."""
import pytest
import torch
from conftest import FEW_DIGITS, TINY_DIGITS_ARGS

from discodiff.checkpoint import load_tensors
from discodiff.cli import main
from discodiff.train.common import configure_backends, seed_dropout

# A tiny digits run WITH dropout: what the dropout seeding is about.
TINY_DIGITS = TINY_DIGITS_ARGS[:-1] + FEW_DIGITS + ["--set", "model.network.dropout=0.3", "--quiet"]


def _train(run, kimg, *extra):
    main(["train", "--preset", "digits", "--run-dir", str(run), "--kimg", str(kimg), "--batch", "32", *TINY_DIGITS,
          *extra])


def _same_weights(a, b):
    wa, wb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dropout_masks_depend_on_rank_and_step_only():
    def mask(*keys):
        seed_dropout(*keys)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(mask(0, 0, 128, 0), mask(0, 0, 128, 0))
    assert not torch.equal(mask(0, 0, 128, 0), mask(0, 1, 128, 0))  # another rank
    assert not torch.equal(mask(0, 0, 128, 0), mask(0, 0, 160, 0))  # another step
    assert not torch.equal(mask(0, 0, 128, 0), mask(0, 0, 128, 1))  # another accumulation round


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tmp_path):
    _train(tmp_path / "straight", 0.256)
    _train(tmp_path / "resumed", 0.128)
    _train(tmp_path / "resumed", 0.256)
    assert "resuming stage I" in (tmp_path / "resumed" / "log.txt").read_text()
    assert _same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_gradient_accumulation_equals_one_large_batch():
    """The loop's accumulation round (backward_round) over 4 micro-batches of 8 gives the gradient of the mean loss
    over the 32 samples, as one round of 32 does."""
    import contextlib

    from discodiff.train.stage1 import backward_round
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    x = torch.randn(32, 5)

    def step_loss(y, labels, generator):  # per-sample losses, as the stage-I loss module returns them
        return (y @ w).square()

    backward_round(step_loss, x, None, None, rank_batch=32, autocast=contextlib.nullcontext())
    one = w.grad.clone()
    w.grad = None
    total = sum(backward_round(step_loss, part, None, None, rank_batch=32, autocast=contextlib.nullcontext())
                for part in x.chunk(4))
    torch.testing.assert_close(w.grad, one)
    torch.testing.assert_close(one, torch.autograd.grad((x @ w).square().mean(), w)[0])
    torch.testing.assert_close(total, (x @ w).square().sum().detach())


def test_the_unet_embedding_stays_float32_under_autocast():
    from discodiff.config import preset_config
    from discodiff.model import DiscoDiff
    cfg = preset_config("digits", {"model": {"data_shape": [1, 8, 8], "num_classes": 3,
                                             "network": {"model_channels": 8, "channels_per_head": 8}}})
    model = DiscoDiff(cfg.model)
    seen = {}
    net = model.denoiser.net
    net.map_layer1.register_forward_hook(lambda m, i, o: seen.update(noise=o.dtype))
    net.map_label.register_forward_hook(lambda m, i, o: seen.update(label=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.denoise(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), class_labels=torch.tensor([0, 2]))
    assert seen == {"noise": torch.float32, "label": torch.float32} and torch.isfinite(out).all()


def test_backend_policy():
    def flags():
        return (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    before = flags()
    try:
        torch.backends.cudnn.benchmark = False
        configure_backends(torch.device("cpu"), tf32=True)  # the CPU: nothing changes
        assert torch.backends.cudnn.benchmark is False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        configure_backends(torch.device("cuda"), tf32=False)  # the flags only: no GPU needed
        assert flags() == (True, False, False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.slow
def test_compile_gives_the_same_training(tmp_path):
    pytest.importorskip("torch._inductor")
    toy = ["--set", "model.network.hidden=16", "--set", "model.network.emb_dim=8", "--set", "model.encoder.hidden=16",
           "--set", "train.tick_kimg=0.128", "--quiet"]
    for name, extra in (("eager", []), ("compiled", ["--set", "train.compile=true"])):
        main(["train", "--preset", "toy2d", "--run-dir", str(tmp_path / name), "--kimg", "0.128", "--batch", "64",
              *toy, *extra])
    a, b = load_tensors(tmp_path / "eager" / "model.safetensors"), load_tensors(tmp_path / "compiled" /
                                                                                "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_short_toy_run_learns_latents_that_carry_the_mode(tmp_path):
    """Learning, not just running: after 10 kimg of the toy (seconds), the denoising loss given the encoder's latents
    is well below the loss given the null latent at the noise levels where the mode is no longer visible (sigma of
    the order of the modes' spacing), and the encoder uses most of the 8 codes."""
    from discodiff.data import load_dataset
    from discodiff.edm import EDMLoss
    from discodiff.latents import codebook_usage
    from discodiff.runs import Run
    run = tmp_path / "toy"
    main(["train", "--preset", "toy2d", "--run-dir", str(run), "--kimg", "10", "--quiet",
          "--set", "model.network.hidden=64", "--set", "model.encoder.hidden=64", "--set", "train.tick_kimg=5",
          "--set", "train.ema_halflife_kimg=2"])
    model = Run(run).load_model()
    y = load_dataset(Run(run).config.data).x[:2000]
    loss = EDMLoss.for_model(model.config)
    with torch.no_grad():
        z = model.encode(y)
        for s in (2.0, 4.0):
            sigma = torch.full((len(y),), s)
            given_z = loss(model.denoiser, y, sigma=sigma, generator=torch.Generator().manual_seed(0),
                           latents=model.latent_input(z)).mean()
            given_null = loss(model.denoiser, y, sigma=sigma, generator=torch.Generator().manual_seed(0),
                              latents=model.latent_input(z), null_latent=torch.ones(len(y), dtype=torch.bool)).mean()
            assert given_z < 0.6 * given_null, (s, float(given_z), float(given_null))
    assert codebook_usage(z, 8)["codes_used"][0] >= 6


def test_freeze_encoder_kimg_stops_the_encoder_there_and_only_the_encoder(tmp_path):
    """train.freeze_encoder_kimg: the run is the unfrozen one until then (a run stopped there has the same weights);
    afterwards the encoder's weights stay exactly as they were while the denoiser goes on learning; and every tick
    after the first logs how many of the probe images' codes moved."""
    import json

    from discodiff.checkpoint import latest_training_state
    freeze = ["--set", "train.freeze_encoder_kimg=0.128"]
    _train(tmp_path / "until", 0.128)
    _train(tmp_path / "frozen", 0.384, *freeze)
    _train(tmp_path / "free", 0.384)

    def weights(run, prefix):
        tensors = latest_training_state(run, "stage1").tensors
        return {k: v for k, v in tensors.items() if k.startswith(prefix)}

    until, frozen, free = (weights(tmp_path / r, "model.") for r in ("until", "frozen", "free"))
    encoder = [k for k in until if k.startswith("model.encoder.")]
    denoiser = [k for k in until if k.startswith("model.denoiser.")]
    assert encoder and denoiser
    assert all(torch.equal(until[k], frozen[k]) for k in encoder)
    assert not all(torch.equal(frozen[k], free[k]) for k in encoder)
    assert not all(torch.equal(until[k], frozen[k]) for k in denoiser)
    rows = [json.loads(line) for line in (tmp_path / "frozen" / "stats.jsonl").read_text().splitlines()]
    churn = [r.get("code_churn") for r in rows if r.get("stage") == 1]
    assert churn[0] is None and all(0 <= c <= 1 for c in churn[1:]) and len(churn) == 3
    assert churn[-1] < 1  # the EMA encoder settles on the frozen weights
    assert "(encoder frozen)" in (tmp_path / "frozen" / "log.txt").read_text()


def test_freeze_encoder_kimg_needs_latents(tmp_path):
    from discodiff.errors import ConfigError
    with pytest.raises((ConfigError, SystemExit)):
        _train(tmp_path / "plain", 0.128, "--latents", "0", "--set", "train.freeze_encoder_kimg=0.1")
