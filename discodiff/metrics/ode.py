"""Geometry of the probability-flow ODE's paths: curvature (paper App. F.3), turning rate, Jacobian norm and
straightness.

The field measures take a `denoise(x, sigma) -> D` callable, as the samplers do, and points x [N, D]; they use
dx/dt = G(x, t) = (x - D(x, t)) / t (sigma(t) = t). `straightness` works on recorded trajectories.
"""
from __future__ import annotations

import numpy as np
import torch


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def ode_field(denoise, x: torch.Tensor, t: float) -> torch.Tensor:
    """G(x, t) = dx/dt = (x - D(x, t)) / t, the EDM probability-flow ODE with sigma(t) = t."""
    sigma = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return (x - denoise(x, sigma)) / t


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _tangent_step(denoise, x: torch.Tensor, t: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|T(x(t)) - T(x(t - dt))|, |x(t) - x(t - dt)|) per sample, with x(t - dt) = x(t) - G dt (one Euler step)."""
    g = ode_field(denoise, x, t)
    x_prev = x - g * dt
    g_prev = ode_field(denoise, x_prev, t - dt)
    return (_unit(g) - _unit(g_prev)).norm(dim=1), (x - x_prev).norm(dim=1)


def curvature(denoise, x: torch.Tensor, t: float, dt: float = 1e-3) -> torch.Tensor:
    """kappa(x(t)) = |dT/dt| / |x'(t)| ~ |T(x(t)) - T(x(t - dt))| / |x(t) - x(t - dt)|  (paper App. F.3).

    T = G / |G| is the unit tangent; x(t - dt) = x(t) - G dt is one Euler step back towards the data.
    Returns kappa per sample [N].
    """
    d_tangent, d_x = _tangent_step(denoise, x, t, dt)
    return d_tangent / d_x.clamp_min(1e-12)


def turning_rate(denoise, x: torch.Tensor, t: float, dt: float = 1e-3) -> torch.Tensor:
    """|dT/dt| = kappa |G| per sample [N]: radians the tangent turns per unit t. Unlike kappa it stays small where
    the path barely moves (t -> 0), so its integral over t is each path's total turning angle."""
    d_tangent, _ = _tangent_step(denoise, x, t, dt)
    return d_tangent / dt


def jacobian_frobenius_sq(denoise, x: torch.Tensor, t: float) -> torch.Tensor:
    """||grad_x G(x, t)||_F^2 per sample [N], from the exact Jacobian.

    Samples do not interact in the network, so d(sum_n G_n[i]) / dx_n is row i of sample n's Jacobian:
    one backward pass per output dimension (two in 2D) gives every sample's full Jacobian.
    """
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        g = ode_field(denoise, x, t)
        rows = [torch.autograd.grad(g[:, i].sum(), x, retain_graph=i < g.shape[1] - 1)[0] for i in range(g.shape[1])]
    return sum(r.square().sum(1) for r in rows).detach()


def ode_profile(denoise, traj: torch.Tensor, sigmas: torch.Tensor, dt: float = 1e-3,
                dtype: torch.dtype = torch.float64) -> dict:
    """Mean curvature and mean squared Jacobian norm at each noise level a sampler visited.

    `traj` [steps + 1, N, D] holds the points at sigmas[0..steps] (as recorded by `trajectory_recorder`);
    the last point sits at sigma = 0, where G is undefined, so the profile covers sigmas[0..steps-1].
    The points are cast to `dtype`, and `denoise` should compute in it: near t = 0.002, x - D(x) is a
    difference of nearly equal numbers, and float32 rounding alone shows up as curvatures of ~1e3.
    """
    ts, kappa, turn, jac = [], [], [], []
    for i in range(len(sigmas) - 1):
        t = float(sigmas[i])
        if t <= dt:
            continue
        x = traj[i].to(dtype)
        ts.append(t)
        kappa.append(float(curvature(denoise, x, t, dt).mean()))
        turn.append(float(turning_rate(denoise, x, t, dt).mean()))
        jac.append(float(jacobian_frobenius_sq(denoise, x, t).mean()))
    return {"t": ts, "curvature": kappa, "turning_rate": turn, "jacobian_fro_sq": jac}


def total_turning(profile: dict) -> float:
    """E[total turning angle of a path] = integral of E|dT/dt| over the profile's t range (trapezoid rule)."""
    t, rate = np.asarray(profile["t"]), np.asarray(profile["turning_rate"])
    return float(np.sum(0.5 * (rate[1:] + rate[:-1]) * np.abs(np.diff(t))))


def straightness(traj, sigmas=None, t_max: float | None = None) -> np.ndarray:
    """End-to-end displacement / path length of each trajectory [steps + 1, N, D] -> [N]; 1 for a straight line.

    From sigma_max = 80 every path starts with a long, nearly straight run towards the data, which pushes the
    ratio to ~1 for any model; with `sigmas` and `t_max` only the part of the path at t <= t_max is measured.
    """
    traj = _np(traj)
    if t_max is not None:
        traj = traj[_np(sigmas) <= t_max]
    path = np.linalg.norm(np.diff(traj, axis=0), axis=-1).sum(0)
    chord = np.linalg.norm(traj[-1] - traj[0], axis=-1)
    return chord / np.maximum(path, 1e-12)
