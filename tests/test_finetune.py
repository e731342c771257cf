"""`discodiff train --init-from RUN`: a finished plain run fine-tuned into DisCo-Diff (discodiff/finetune.py)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FEW_DIGITS, TINY_DIGITS_ARGS, TINY_UNET, one_line_error, run_cli

from discodiff import finetune
from discodiff.checkpoint import MODEL, load_tensors, save_tensors
from discodiff.cli import main
from discodiff.config import ConfigError, merge, preset_config
from discodiff.model import DiscoDiff
from discodiff.runs import Run, file_sha256

# The tiny digits U-Net of test_end_to_end.py, trained for a few steps in about a second.
TINY_DIGITS = TINY_DIGITS_ARGS[:-1] + FEW_DIGITS + ["--quiet"]


pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished plain digits run (m = 0), trained a few steps through the command line."""
    run = tmp_path_factory.mktemp("ft") / "base"
    main(["train", "--preset", "digits", "--run-dir", str(run), "--latents", "0", "--kimg", "0.128",
          "--lr", "0.005", *TINY_DIGITS])
    return run


def _train(run, *args):
    main(["train", "--run-dir", str(run), *TINY_DIGITS, *args])




# ---- the network starts as the plain one ---------------------------------------------------------------------

def _plain_run(tmp_path, preset, model_overrides, shape, seed=1):
    """A finished plain run (train.kimg 0) whose weights are all random, the zero-initialised layers included, so
    that the plain network computes a non-trivial function. Returns (run folder, its model, its config)."""
    cfg = preset_config(preset, {"model": merge(model_overrides, {"num_latents": 0}), "train": {"kimg": 0}})
    cfg.model.data_shape = shape
    torch.manual_seed(seed)
    plain = DiscoDiff(cfg.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    Run.create(tmp_path / "base", cfg)
    plain.save(tmp_path / "base" / MODEL)
    return tmp_path / "base", plain.eval(), cfg


UNET = {"network": TINY_UNET}
BACKBONES = {
    "unet, embedding": ("digits", UNET, [1, 8, 8], {}),
    "unet, cross-attention": ("digits", UNET, [1, 8, 8], {"network": {"latent_injection": "cross_attention"}}),
    "unet, hierarchical cross-attention": ("digits", UNET, [1, 8, 8],
                                          {"network": {"latent_injection": "cross_attention", "latent_groups": 2}}),
    "unet, class-conditional": ("digits", merge(UNET, {"num_classes": 10}), [1, 8, 8], {}),
    "mlp": ("toy2d", {"network": {"centred": False, "hidden": 32, "emb_dim": 16}}, [2], {}),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_fine_tuned_network_starts_bit_identical_to_the_plain_one(tmp_path, name):
    preset, model_o, shape, latent_o = BACKBONES[name]
    base, plain, cfg0 = _plain_run(tmp_path, preset, model_o, shape)
    cfg = preset_config(preset, {"model": merge(model_o, merge(latent_o, {"num_latents": 4, "codebook_size": 8})),
                                 "train": {"init_from": finetune.base_record(base)}})
    cfg.model.data_shape = shape
    finetune.check_base(cfg)
    torch.manual_seed(7)  # the new parts are whatever the new run's seed makes them
    new = DiscoDiff(cfg.model)
    finetune.load_base_weights(new, cfg.train.init_from)
    new.eval()
    g = torch.Generator().manual_seed(0)
    B = 12
    x = torch.randn(B, *shape, generator=g) * 3
    sigma = torch.exp(torch.randn(B, generator=g) * 2)
    labels = torch.randint(0, 10, (B,), generator=g) if cfg0.model.num_classes else None
    with torch.no_grad():
        expected = plain.denoise(x, sigma, class_labels=labels)
        assert not torch.allclose(expected, plain.denoise(x, sigma * 2, class_labels=labels))  # not a trivial F
        for z in (torch.randint(0, 8, (B, 4), generator=g), torch.zeros(B, 4, dtype=torch.long)):
            assert torch.equal(new.denoise(x, sigma, z=z, class_labels=labels), expected)
        assert torch.equal(new.denoise(x, sigma, class_labels=labels), expected)  # the null latent
        mixed = torch.arange(B) % 2 == 0  # some rows null, some not, in one batch
        latents = torch.nn.functional.one_hot(torch.randint(0, 8, (B, 4), generator=g), 8).float()
        assert torch.equal(new.denoise(x, sigma, latents=latents, null_latent=mixed, class_labels=labels), expected)
    # the new parts are fresh, not zero: only the output projections are, and they are what training moves first
    assert any(p.abs().sum() > 0 for n, p in new.named_parameters() if n.startswith("encoder."))


def test_new_parts_are_the_encoder_and_the_latent_path():
    cfg = preset_config("digits", {"model": {"network": {"latent_injection": "cross_attention"}}})
    cfg.model.data_shape = [1, 8, 8]
    new = finetune.new_parameter_names(cfg.model)
    names = [n for n, _ in DiscoDiff(cfg.model).named_parameters()]
    assert new == {n for n in names if n.startswith("encoder.") or ".latent_" in n or ".cross_attn." in n}
    assert any(".cross_attn.proj." in n for n in new) and any(n.startswith("encoder.") for n in new)


def test_a_centred_mlp_cannot_start_silent(tmp_path):
    base, _, _ = _plain_run(tmp_path, "toy2d", {"network": {"hidden": 32, "emb_dim": 16}}, [2])
    cfg = preset_config("toy2d", {"model": {"network": {"hidden": 32, "emb_dim": 16}},
                                  "train": {"init_from": finetune.base_record(base)}})
    with pytest.raises(ConfigError, match="centred"):
        finetune.check_base(cfg)


# ---- through `discodiff train` ------------------------------------------------------------------------------

def test_init_from_trains_from_the_base_records_it_and_resumes(base_run, tmp_path):
    new = tmp_path / "new"
    # --kimg 0: the weights at step 0, written as the EMA, which starts from the base's EMA weights
    _train(new, "--preset", "digits", "--init-from", str(base_run), "--kimg", "0")
    base_w, new_w = load_tensors(base_run / MODEL), load_tensors(new / MODEL)
    assert all(torch.equal(new_w[k], v) for k, v in base_w.items())
    cfg = Run(new).config
    assert cfg.train.init_from == {"run": str(base_run.resolve()), "sha256": file_sha256(base_run / MODEL)}
    base_model, new_model = Run(base_run).load_model(), Run(new).load_model()
    x, sigma = torch.randn(8, 1, 8, 8), torch.linspace(0.05, 20, 8)
    z = torch.randint(0, new_model.config.codebook_size, (8, new_model.num_latents))
    with torch.no_grad():
        assert torch.equal(new_model.denoise(x, sigma, z=z), base_model.denoise(x, sigma))

    # training proper: --kimg counts this run's own images; the new parts get train.new_parts_lr
    _train(new, "--init-from", str(base_run), "--kimg", "0.128", "--lr", "0.002", "--set", "train.new_parts_lr=0.01")
    log = (new / "log.txt").read_text()
    assert log.count("starts from the plain run") == 2 and "0.128 kimg" in log
    state = json.loads(next((new / "state").glob("stage1-*/state.json")).read_text())
    assert state["nimg"] == 128
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.002, 0.01]
    assert len(groups[1]["params"]) == len(finetune.new_parameter_names(cfg.model))
    trained = Run(new).load_model()
    with torch.no_grad():
        assert not torch.equal(trained.denoise(x, sigma, z=z), base_model.denoise(x, sigma))

    # resuming (the same command, or none of --init-from) continues from the run's own state, never from the base
    _train(new, "--init-from", str(base_run), "--kimg", "0.256")
    log = (new / "log.txt").read_text()
    assert "resuming stage I from 0.1 kimg" in log and log.count("starts from the plain run") == 2


def test_a_base_that_changed_before_the_first_step_is_refused(base_run, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(base_run, base)
    new = tmp_path / "new"
    _train(new, "--preset", "digits", "--init-from", str(base), "--kimg", "0")  # config written, nothing trained
    save_tensors(load_tensors(base / MODEL), base / MODEL, metadata={"kimg": "0.128", "note": "retrained"})
    code, _, err = run_cli(["train", "--run-dir", str(new), "--kimg", "0.128", "--quiet"], capsys)
    one_line_error(code, err, "changed since this run was created from it")


def _copy(base_run, tmp_path, name="base"):
    shutil.copytree(base_run, tmp_path / name)
    return tmp_path / name


def _unfinished(base_run, tmp_path):
    run = Run(_copy(base_run, tmp_path))
    run.config.train.kimg = 1.0  # as if resumed with a larger --kimg and stopped
    run.save_config()
    return run.path


def _corrupt(base_run, tmp_path):
    base = _copy(base_run, tmp_path)
    (base / MODEL).write_bytes(b"not a safetensors file at all")
    return base


def _no_weights(base_run, tmp_path):
    base = _copy(base_run, tmp_path)
    (base / MODEL).unlink()
    return base


def _npz_16px(base_run, tmp_path):
    np.savez(tmp_path / "big.npz", x=np.random.default_rng(0).integers(0, 255, (8, 16, 16, 1), dtype=np.uint8))
    return base_run


CASES = {
    "missing": (lambda b, t: t / "nowhere", [], ["--init-from", "does not exist"]),
    "no weights": (_no_weights, [], ["has no trained weights"]),
    "unreadable weights": (_corrupt, [], ["not a valid safetensors file"]),
    "unfinished": (_unfinished, [], ["is unfinished (0.128 of 1 kimg)"]),
    "another backbone": (lambda b, t: b, ["--set", "model.network.model_channels=16"],
                         ["another backbone", "network.model_channels 8 there, 16 here"]),
    "another data shape": (_npz_16px, ["--data", "{tmp}/big.npz"], ["data of shape [1, 8, 8]", "[1, 16, 16]"]),
    "class conditioning": (lambda b, t: b, ["--cond"], ["no class conditioning", "--uncond"]),
    "no latents": (lambda b, t: b, ["--latents", "0"], ["needs latents"]),
    "another process": (lambda b, t: b, ["--set", "model.process=pfgmpp"], ["model.process edm", "pfgmpp (D=128)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bases_are_refused_in_one_line(base_run, tmp_path, capsys, case):
    make, extra, needles = CASES[case]
    base = make(base_run, tmp_path)
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(tmp_path / "new"), "--init-from",
                            str(base), *TINY_DIGITS, *extra], capsys)
    one_line_error(code, err, *needles)
    assert not (tmp_path / "new").exists()  # refused before anything is written


def test_a_fine_tuned_base_and_mismatched_resumes_are_refused(base_run, tmp_path, capsys):
    new = tmp_path / "new"
    _train(new, "--preset", "digits", "--init-from", str(base_run), "--kimg", "0")
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(tmp_path / "other"), "--init-from",
                            str(new), *TINY_DIGITS], capsys)
    one_line_error(code, err, "is a DisCo-Diff run (m = 4)", "plain EDM run")
    code, _, err = run_cli(["train", "--run-dir", str(new), "--init-from", str(tmp_path / "elsewhere"), "--quiet"],
                           capsys)
    one_line_error(code, err, "started from", "not")
    code, _, err = run_cli(["train", "--run-dir", str(base_run), "--init-from", str(new), "--quiet"], capsys)
    one_line_error(code, err, "did not start from another")
    code, _, err = run_cli(["train", "--run-dir", str(new), "--set", 'train.init_from=null', "--quiet"], capsys)
    one_line_error(code, err, "train.init_from")


def test_new_parts_lr_needs_init_from(tmp_path, capsys):
    code, _, err = run_cli(["train", "--preset", "digits", "--run-dir", str(tmp_path / "r"), *TINY_DIGITS,
                            "--set", "train.new_parts_lr=0.01"], capsys)
    one_line_error(code, err, "needs --init-from")


# ---- under torchrun ------------------------------------------------------------------------------------------

TINY_MLP = ["--set", "model.network.centred=false", "--set", "model.network.hidden=16",
            "--set", "model.network.emb_dim=8", "--set", "model.encoder.hidden=16", "--set", "train.tick_kimg=0.5",
            "--quiet"]


@pytest.mark.slow
def test_fine_tuning_under_torchrun_keeps_replicas_identical(tmp_path):
    base, new = tmp_path / "base", tmp_path / "new"
    main(["train", "--preset", "toy2d", "--run-dir", str(base), "--latents", "0", "--kimg", "0.5", "--batch", "64",
          *TINY_MLP])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port=29531", "-m", "discodiff", "train", "--preset", "toy2d", "--run-dir", str(new),
           "--init-from", str(base), "--kimg", "1", "--batch", "64", *TINY_MLP]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (new / "log.txt").read_text()
    assert "starts from the plain run" in log and "replicas identical on all 2 processes" in log
    assert "batch 64 = 32 x 1 x 2" in log
