"""Energy and carbon.

Compute energy = device busy power x compute time. Radio energy uses the throughput-based power model of
Huang et al. 2012 (MobiSys): P = alpha_up * thr_up + alpha_down * thr_down + beta (mW, thr in Mbit/s), applied
to each transfer direction for its duration. Carbon = energy x grid intensity.
"""

from __future__ import annotations

J_PER_KWH = 3.6e6


def compute_energy_j(power_w, seconds):
    """Busy power x time."""
    return power_w * seconds


def radio_energy_j(alpha_mw_per_mbps, beta_mw, throughput_mbps, seconds):
    """Energy of one transfer direction under the Huang et al. 2012 power model."""
    return (alpha_mw_per_mbps * throughput_mbps + beta_mw) * 1e-3 * seconds


def carbon_g(energy_j, grid_gco2_per_kwh):
    """Grams of CO2 for `energy_j` joules at the grid's carbon intensity."""
    return energy_j / J_PER_KWH * grid_gco2_per_kwh
