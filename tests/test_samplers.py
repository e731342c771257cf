"""The Restart and DPM-Solver++(2M) samplers and hybrid two-model sampling, on the exact denoiser of a Gaussian
mixture (so every error is the sampler's) and on tiny models through `generate` and the command line."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from discodiff.cli import main
from discodiff.config import ConfigError, preset_config
from discodiff.model import DiscoDiff
from discodiff.pipeline import generate, hybrid_denoiser, sampler_from_name
from discodiff.sampling import (NAMED_SAMPLERS, RESTART_PRESETS, SAMPLERS, StackedGenerator, karras_sigmas, nfe,
                                restart_nfe, restart_points, sample_dpmpp_2m, sample_euler, sample_heun,
                                sample_restart)

from conftest import gaussian_mixture_denoiser, run_cli, train_tiny_toy

MEANS = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
STD = 0.2
PRESET = RESTART_PRESETS["imagenet64-623"]


def _counting(denoise):
    """(denoise that counts its calls, the list of sigmas it was called at)."""
    calls = []

    def counted(x, sigma):
        calls.append(float(sigma[0]))
        return denoise(x, sigma)

    return counted, calls


def _noise(n, sigma_max=80.0, seed0=0):
    gen = StackedGenerator(range(seed0, seed0 + n))
    return gen, gen.randn([2], dtype=torch.float64) * sigma_max


def _freqs(x):
    return torch.bincount(torch.cdist(x, MEANS).argmin(1), minlength=3).double() / len(x)


# ---- Restart ------------------------------------------------------------------------------------------------------

def test_restart_preset_costs_623_network_evaluations():
    denoise, calls = _counting(gaussian_mixture_denoiser(MEANS, STD))
    gen, noise = _noise(4)
    options = {k: v for k, v in PRESET.items() if k != "num_steps"}
    x = sample_restart(denoise, noise, karras_sigmas(PRESET["num_steps"], dtype=torch.float64),
                       randn_like=gen.randn_like, **options)
    assert torch.isfinite(x).all()
    assert len(calls) == 623
    assert restart_nfe(36, PRESET["intervals"]) == 623 and nfe("restart", 36, **options) == 623
    # the five intervals start at five distinct points of the 36-step grid, each below its t_max
    sigmas = karras_sigmas(36)
    points = restart_points(sigmas, PRESET["intervals"])
    assert sorted(points) == [8, 21, 23, 25, 29]
    assert all(float(sigmas[i]) < t_max for i, (_, _, t_max) in points.items())


def test_restart_evaluations_of_a_small_interval_list():
    intervals = [(3, 2, 1.0, 5.0), (4, 1, 0.1, 0.5)]
    denoise, calls = _counting(gaussian_mixture_denoiser(MEANS, STD))
    gen, noise = _noise(3)
    sigmas = karras_sigmas(10, dtype=torch.float64)
    sample_restart(denoise, noise, sigmas, intervals, restart_gamma=0.1, S_min=0.05, S_max=2.0,
                   randn_like=gen.randn_like)
    # Heun 2*10 - 1, then 2 repeats of 2 Heun steps and 1 repeat of 3 Heun steps, 2 evaluations each
    assert len(calls) == 19 + 2 * 2 * 2 + 1 * 3 * 2 == restart_nfe(10, intervals) == nfe("restart", 10,
                                                                                          intervals=intervals)
    # each restart climbs to t_max and comes back down to the grid point nearest t_min
    i = restart_points(sigmas, intervals)
    assert set(i.values()) == {(3, 2, 5.0), (4, 1, 0.5)}
    assert max(calls) == float(sigmas[0]) and 5.0 in calls  # above S_max: no churn
    assert any(math.isclose(c, 0.5 * 1.1) for c in calls)  # in [S_min, S_max]: raised by restart_gamma first
    no_restart = sample_heun(gaussian_mixture_denoiser(MEANS, STD), noise, sigmas)
    gen, _ = _noise(3)
    assert torch.equal(sample_restart(gaussian_mixture_denoiser(MEANS, STD), noise, sigmas, [],
                                      randn_like=gen.randn_like), no_restart)  # no intervals: exactly Heun


def _restart_reference(denoise, x, sigmas, restart_info, S_noise, S_min, S_max, restart_gamma, randn_like):
    """Restart's EDM sampler as its reference code lays it out (Newbeeer/diffusion_restart_sampling,
    generate_restart.py), with the main pass's churn off; noise is drawn only where it is used."""
    restart = {int(torch.argmin((sigmas - v[2]).abs())): v for v in restart_info}
    n = len(sigmas) - 1
    for i in range(n):
        t, t_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, t.expand(len(x)))) / t
        x_next = x + (t_next - t) * d
        if i < n - 1:
            d2 = (x_next - denoise(x_next, t_next.expand(len(x)))) / t_next
            x_next = x + (t_next - t) * (d + d2) / 2
        x = x_next
        if i + 1 in restart:
            n_levels, k, _, t_max = restart[i + 1]
            lo = sigmas[i + 1]
            j = torch.arange(n_levels, dtype=torch.float64)
            levels = (t_max ** (1 / 7) + j / (n_levels - 1) * (lo ** (1 / 7) - t_max ** (1 / 7))) ** 7
            for _ in range(k):
                x = x + randn_like(x) * (levels[0] ** 2 - levels[-1] ** 2).sqrt() * S_noise
                for t, t_next in zip(levels[:-1], levels[1:]):
                    gamma = restart_gamma if S_min <= t <= S_max else 0
                    t_hat = t + gamma * t
                    if gamma > 0:
                        x = x + (t_hat ** 2 - t ** 2).sqrt() * S_noise * randn_like(x)
                    d = (x - denoise(x, t_hat.expand(len(x)))) / t_hat
                    x_next = x + (t_next - t_hat) * d
                    d2 = (x_next - denoise(x_next, t_next.expand(len(x)))) / t_next
                    x = x + (t_next - t_hat) * (d + d2) / 2
    return x


def test_restart_follows_the_reference_algorithm():
    denoise = gaussian_mixture_denoiser(MEANS, STD)
    _, noise = _noise(16)
    sigmas = karras_sigmas(12, dtype=torch.float64)
    intervals = [(4, 2, 10.0, 30.0), (5, 3, 0.3, 1.5), (3, 2, 0.01, 0.05)]
    kw = dict(S_noise=1.01, S_min=0.02, S_max=1.0, restart_gamma=0.2)
    draws = []

    def stream(seed):
        g = torch.Generator().manual_seed(seed)
        return lambda x: draws.append(1) or torch.randn(x.shape, generator=g, dtype=x.dtype)

    got = sample_restart(denoise, noise, sigmas, intervals, randn_like=stream(5), **kw)
    used = len(draws)
    expected = _restart_reference(denoise, noise, sigmas, intervals, randn_like=stream(5), **kw)
    assert len(draws) == 2 * used  # both drew the same noise, in the same order
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert (got - sample_heun(denoise, noise, sigmas)).abs().max() > 1e-2  # the restarts changed the result


def test_restart_pulls_a_biased_sampler_back_to_the_data():
    """A denoiser that believes in the wrong mode weights (0.8, 0.1, 0.1) above sigma = 8 sends too much mass to the
    first mode, and the ODE keeps that error to the end. Restart over [0.5, 5], where the denoiser is exact, noises
    the samples enough to mix the modes and solves back: the mode weights come out near 1/3 again."""
    exact = gaussian_mixture_denoiser(MEANS, STD)
    wrong = gaussian_mixture_denoiser(MEANS, STD, torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64))

    def biased(x, sigma):
        return wrong(x, sigma) if float(sigma[0]) > 8 else exact(x, sigma)

    gen, noise = _noise(4000)
    sigmas = karras_sigmas(18, dtype=torch.float64)
    plain = sample_heun(biased, noise, sigmas)
    restarted = sample_restart(biased, noise, sigmas, [(8, 5, 0.5, 5.0)], randn_like=gen.randn_like)
    err_plain = float((_freqs(plain) - 1 / 3).abs().sum())
    err_restart = float((_freqs(restarted) - 1 / 3).abs().sum())
    assert err_plain > 0.15, _freqs(plain)  # the bias is really there
    assert err_restart < err_plain / 4, (_freqs(plain), _freqs(restarted))
    # and the modes keep their width (restart does not blur them)
    comp = torch.cdist(restarted, MEANS).argmin(1)
    within = torch.stack([(restarted[comp == j] - MEANS[j]).std(0).mean() for j in range(3)])
    assert torch.allclose(within, torch.full((3,), STD, dtype=torch.float64), rtol=0.15), within


@pytest.mark.parametrize("intervals,needle", [
    ([(10, 3, 2.0, 1.0)], "0 < t_min < t_max"),
    ([(10, 3, 1.0, 90.0)], "beyond sigma_max 80"),
    ([(1, 3, 1.0, 2.0)], "n_levels"),
    ([(10, 0, 1.0, 2.0)], "k_repeats"),
    ([(10.5, 3, 1.0, 2.0)], "n_levels"),
    ([(10, 3, 1.0)], "four numbers"),
    ([(10, 3, 1.3, 1.4)], "not below t_max"),  # the 10-step grid has 4.07, 1.50, 0.47 there
    ([(10, 3, 0.6, 2.0), (4, 1, 0.5, 3.0)], "same grid point"),
    ([(10, 3, 70.0, 80.0)], "nearest sigma_max"),
    ([(10, 3, 1e-5, 1e-3)], "final sigma = 0"),
])
def test_restart_intervals_that_cannot_run_are_refused(intervals, needle):
    with pytest.raises(ConfigError, match=needle):
        restart_nfe(10, intervals)
    with pytest.raises(ConfigError, match=needle):
        sample_restart(gaussian_mixture_denoiser(MEANS, STD), torch.zeros(2, 2), karras_sigmas(10), intervals)


def _tiny_model(num_latents, seed):
    cfg = preset_config("toy2d", {"model": {"num_latents": num_latents, "network": {"hidden": 16, "emb_dim": 8},
                                            "encoder": {"hidden": 16}}})
    torch.manual_seed(seed)
    return DiscoDiff(cfg.model).eval()


def test_restart_samples_depend_on_their_seed_only():
    model = _tiny_model(1, 0)
    sampler = sampler_from_name("restart", intervals=[(4, 2, 0.5, 3.0)], restart_gamma=0.1, S_min=0.1, S_max=2.0,
                                S_noise=1.003)
    sigmas = karras_sigmas(8)
    z = torch.arange(7)[:, None] % 8

    def draw(seeds, zs):
        return generate(model, seeds, sigmas, sampler=sampler, z=zs)[0]

    x_all = draw(range(10, 17), z)
    x_a, x_b = draw(range(10, 13), z[:3]), draw(range(13, 17), z[3:])
    torch.testing.assert_close(torch.cat([x_a, x_b]), x_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draw([15], z[5:6])[0], x_all[5], rtol=1e-5, atol=1e-5)
    assert (x_all - generate(model, range(10, 17), sigmas, z=z)[0]).abs().max() > 1e-3  # the restart noise acted


def test_restart_needs_its_intervals_and_stays_out_of_run_configs():
    assert "restart" in SAMPLERS and "restart" not in NAMED_SAMPLERS and "dpmpp-2m" in NAMED_SAMPLERS
    with pytest.raises(ConfigError, match="needs intervals"):
        sampler_from_name("restart")
    with pytest.raises(ConfigError, match="needs intervals"):
        nfe("restart", 10)
    with pytest.raises(ConfigError, match="run config"):
        preset_config("toy2d", {"sample": {"sampler": "restart"}})
    assert preset_config("toy2d", {"sample": {"sampler": "dpmpp-2m"}}).sample.sampler == "dpmpp-2m"
    assert nfe("heun", 18) == 35 and nfe("edm", 18, S_churn=40) == 35 and nfe("dpmpp-2m", 18) == 18


# ---- DPM-Solver++(2M) ---------------------------------------------------------------------------------------------

def _dpmpp_2m_in_log_time(denoise, x, sigmas):
    """DPM-Solver++(2M) written in t = -log(sigma) with expm1, the form of k-diffusion's sample_dpmpp_2m."""
    old = None
    for i in range(len(sigmas) - 1):
        D = denoise(x, sigmas[i].expand(len(x)))
        if sigmas[i + 1] == 0:
            x = D
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old is None:
                D_hat = D
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                D_hat = (1 + 1 / (2 * r)) * D - 1 / (2 * r) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * D_hat
        old = D
    return x


def test_dpmpp_2m_follows_the_multistep_update_and_one_step_is_euler():
    denoise = gaussian_mixture_denoiser(MEANS, STD)
    _, noise = _noise(64)
    sigmas = karras_sigmas(9, dtype=torch.float64)
    torch.testing.assert_close(sample_dpmpp_2m(denoise, noise, sigmas), _dpmpp_2m_in_log_time(denoise, noise, sigmas),
                               rtol=1e-10, atol=1e-10)
    one = karras_sigmas(1, dtype=torch.float64)
    torch.testing.assert_close(sample_dpmpp_2m(denoise, noise, one), sample_euler(denoise, noise, one),
                               rtol=1e-12, atol=1e-12)
    two = karras_sigmas(2, dtype=torch.float64)  # first step and the step to 0: both first order, as Euler
    torch.testing.assert_close(sample_dpmpp_2m(denoise, noise, two), sample_euler(denoise, noise, two),
                               rtol=1e-12, atol=1e-12)
    counted, calls = _counting(denoise)
    sample_dpmpp_2m(counted, noise, sigmas)
    assert len(calls) == 9 == nfe("dpmpp-2m", 9)


def test_dpmpp_2m_converges_at_second_order():
    """Its error against a fine Heun solution of the mixture's ODE falls about 4x per doubling of the steps (Euler's
    2x). Wide modes (std 1) keep the ODE smooth, so no sample changes mode between step counts."""
    denoise = gaussian_mixture_denoiser(MEANS, 1.0)
    _, noise = _noise(200)
    ref = sample_heun(denoise, noise, karras_sigmas(800, dtype=torch.float64))

    def err(sampler, n):
        return float((sampler(denoise, noise, karras_sigmas(n, dtype=torch.float64)) - ref).norm(dim=1).mean())

    e = {n: err(sample_dpmpp_2m, n) for n in (20, 40, 80)}
    assert e[20] / e[40] > 3 and e[40] / e[80] > 3, e
    assert e[40] < err(sample_euler, 40) / 5, e


def test_latent_switching_refuses_the_multistep_solver():
    """Switching resumes a trajectory mid-way, which dpmpp-2m cannot do exactly (it carries the last evaluation)."""
    from discodiff.analysis.common import AnalysisError
    from discodiff.analysis.switching import switched_samples

    z = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(AnalysisError, match="one-step"):
        switched_samples(_tiny_model(1, 0), [0, 1], z, z + 1, [0.5], steps=4, sampler="dpmpp-2m")


# ---- hybrid two-model sampling --------------------------------------------------------------------------------------

def test_hybrid_denoiser_picks_by_sigma():
    first = lambda x, s: torch.ones_like(x)  # noqa: E731
    second = lambda x, s: -torch.ones_like(x)  # noqa: E731
    d = hybrid_denoiser(first, second, 1.0)
    x = torch.zeros(3, 2)
    assert d(x, torch.full((3,), 1.0)).eq(1).all() and d(x, torch.full((3,), 0.99)).eq(-1).all()
    with pytest.raises(ValueError, match="one noise level"):
        d(x, torch.tensor([2.0, 0.5, 0.5]))


def test_hybrid_switch_at_the_ends_is_one_model_alone():
    """Bit for bit: a switch above sigma_max is the second model alone, a switch at 0 the first model alone (both
    models draw one uniform before the noise, m = 1 and m = 0, so the seeds give them the same noise)."""
    disco, base = _tiny_model(1, 0), _tiny_model(0, 1)
    sigmas, seeds, z = karras_sigmas(6), range(20, 25), torch.arange(5)[:, None]
    alone_disco, _ = generate(disco, seeds, sigmas, z=z)
    alone_base, _ = generate(base, seeds, sigmas)
    assert torch.equal(generate(disco, seeds, sigmas, z=z, hybrid=(base, 0.0))[0], alone_disco)
    assert torch.equal(generate(disco, seeds, sigmas, z=z, hybrid=(base, 81.0))[0], alone_base)
    mixed, _ = generate(disco, seeds, sigmas, z=z, hybrid=(base, 1.0))
    assert (mixed - alone_disco).abs().max() > 1e-4 and (mixed - alone_base).abs().max() > 1e-4
    # the switch is at a noise level, so the same hybrid sample comes out of any batch
    torch.testing.assert_close(generate(disco, [22], sigmas, z=z[2:3], hybrid=(base, 1.0))[0][0], mixed[2],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="data shape"):
        generate(disco, seeds, sigmas, z=z, hybrid=(DiscoDiff(preset_config(
            "toy2d", {"model": {"data_shape": [3], "num_latents": 0}}).model), 1.0))


# ---- the command line -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny DisCo-Diff toy run with its prior, and a tiny plain (m = 0) one."""
    root = tmp_path_factory.mktemp("samplers")
    train_tiny_toy(root / "disco", kimg=0.5)
    main(["train-prior", "--run-dir", str(root / "disco"), "--kimg", "0.2", "--batch", "64", "--quiet"])
    train_tiny_toy(root / "base", "--latents", "0", kimg=0.5)
    return root


def _sample(capsys, run, out, *args):
    code, stdout, err = run_cli(["sample", "--run-dir", str(run), "--num", "3", "--out", str(out), *args], capsys)
    assert code in (0, None), err
    return np.load(out), stdout


def test_cli_restart_and_dpmpp(runs, tmp_path, capsys):
    d, stdout = _sample(capsys, runs / "disco", tmp_path / "r.npz", "--sampler", "restart",
                        "--restart-preset", "imagenet64-623")
    assert "36 steps = 623 network evaluations per sample" in stdout and np.isfinite(d["x"]).all()
    d2, stdout = _sample(capsys, runs / "disco", tmp_path / "r2.npz", "--sampler", "restart", "--steps", "10",
                         "--restart-intervals", "[[3, 2, 1.0, 5.0], [4, 1, 0.1, 0.5]]", "--guidance", "1")
    assert f"10 steps = {2 * 33} network evaluations per sample" in stdout  # guidance doubles the 33
    _, stdout = _sample(capsys, runs / "disco", tmp_path / "p.npz", "--sampler", "dpmpp-2m", "--steps", "7")
    assert "7 steps = 7 network evaluations" in stdout


@pytest.mark.parametrize("args,needle", [
    (["--restart-preset", "imagenet64-623"], "applies to --sampler restart"),
    (["--sampler", "heun", "--restart-intervals", "[[3, 1, 1.0, 2.0]]"], "applies to --sampler restart"),
    (["--sampler", "restart"], "needs --restart-preset"),
    (["--sampler", "restart", "--restart-preset", "nope"], "unknown restart preset 'nope'"),
    (["--sampler", "restart", "--restart-intervals", "[[3, 1, 1.0, 2.0]"], "not valid JSON"),
    (["--sampler", "restart", "--restart-intervals", "{\"a\": 1}"], "JSON list of"),
    (["--sampler", "restart", "--restart-intervals", "[[3, 1, 2.0, 1.0]]"], "0 < t_min < t_max"),
    (["--sampler", "restart", "--restart-intervals", "[[3, 1, 1.0, 100]]"], "beyond sigma_max"),
    (["--hybrid-run", "BASE"], "go together"),
    (["--switch-sigma", "1"], "go together"),
])
def test_cli_bad_sampler_options_are_one_line(runs, tmp_path, capsys, args, needle):
    args = [str(runs / "base") if a == "BASE" else a for a in args]
    out = tmp_path / "x.npz"
    code, _, err = run_cli(["sample", "--run-dir", str(runs / "disco"), "--num", "2", "--out", str(out), *args],
                           capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert not out.exists()


def test_cli_hybrid_round_trip(runs, tmp_path, capsys):
    disco, base = runs / "disco", runs / "base"
    alone_disco, _ = _sample(capsys, disco, tmp_path / "d.npz", "--steps", "6")
    alone_base, _ = _sample(capsys, base, tmp_path / "b.npz", "--steps", "6")
    low, stdout = _sample(capsys, disco, tmp_path / "h0.npz", "--steps", "6", "--hybrid-run", str(base),
                          "--switch-sigma", "0")
    assert np.array_equal(low["x"], alone_disco["x"]) and np.array_equal(low["z"], alone_disco["z"])
    assert "11 network evaluations" in stdout and f"{base}'s below it" in stdout
    assert str(low["hybrid_run"]) == str(base) and float(low["switch_sigma"]) == 0.0
    high, _ = _sample(capsys, disco, tmp_path / "h1.npz", "--steps", "6", "--hybrid-run", str(base),
                      "--switch-sigma", "100")
    assert np.array_equal(high["x"], alone_base["x"])
    mid, stdout = _sample(capsys, disco, tmp_path / "h2.npz", "--steps", "6", "--hybrid-run", str(base),
                     "--switch-sigma", "1", "--guidance", "2")
    assert not np.array_equal(mid["x"], alone_disco["x"]) and not np.array_equal(mid["x"], alone_base["x"])
    # the real count: latent guidance doubles only the evaluations at sigma >= 1, which DisCo-Diff makes
    sig = [float(s) for s in karras_sigmas(6)]
    evaluated = sig[:6] + sig[1:6]  # Heun: each step at its start, and at its end unless that is sigma = 0
    assert f"{sum(2 if s >= 1 else 1 for s in evaluated)} network evaluations" in stdout

    # a second run of other data is refused before any work
    for key, value, needle in (("data_shape", [3], "shape [3]"), ("num_classes", 2, "2 classes")):
        other = tmp_path / f"other-{key}"
        shutil.copytree(base, other)
        cfg = json.loads((other / "config.json").read_text())
        cfg["model"][key] = value
        (other / "config.json").write_text(json.dumps(cfg))
        code, _, err = run_cli(["sample", "--run-dir", str(disco), "--num", "2", "--out", str(tmp_path / "x.npz"),
                                "--hybrid-run", str(other), "--switch-sigma", "1"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
