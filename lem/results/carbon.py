"""CO2 of a run: its energy × PUE × the grid's carbon intensity, from what the energy meters recorded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lem.results.phase_energy import ESTIMATED_SOURCE, per

J_PER_KWH = 3.6e6


def co2_section(
    meters: dict[int, dict[str, Any]],
    run_j: float | None,
    run_source: str | None,
    all_phases: float | None,
    totals: list[dict[str, Any]],
    gen: Mapping[str, Any],
    n_out: int,
    warnings: list[str],
) -> dict[str, Any]:
    """CO2 of the run (its window, else the sum of its phases), of the generation phase and per output token.

    Carbon intensity and PUE come from the first process whose meter recorded an intensity;
    estimated energy that the measured headline leaves out is converted apart.
    """
    values = {(m.get("carbon_intensity_g_per_kwh"), m.get("carbon_intensity_source"), m.get("pue")) for m in meters.values()}
    values = {v for v in values if v[0] is not None}
    if len(values) > 1:
        warnings.append("processes recorded different carbon intensities or PUEs: CO2 uses process 0's")
    chosen = next(((m["carbon_intensity_g_per_kwh"], m.get("carbon_intensity_source"), m.get("pue")) for _, m in sorted(meters.items()) if m.get("carbon_intensity_g_per_kwh") is not None), None)
    intensity, source, pue = chosen if chosen else (None, None, None)
    pue = float(pue) if pue is not None else 1.0
    if run_j is not None:
        energy, basis, energy_source = run_j, "run window", run_source
    elif all_phases is not None:
        energy, basis, energy_source = all_phases, "sum of phases", totals[0]["energy_source"]
    else:
        energy, basis, energy_source = None, None, None

    def co2(j: float | None) -> float | None:
        return j * pue / J_PER_KWH * intensity if j is not None and intensity is not None else None

    estimated_run = None
    if energy_source and ESTIMATED_SOURCE not in energy_source.split("+"):
        ests = [ph.get("estimated_energy_j") for ph in totals]
        estimated_run = sum(ests) if ests and all(x is not None for x in ests) else None
    return {
        "carbon_intensity_g_per_kwh": intensity,
        "carbon_intensity_source": source,
        "pue": pue if chosen else None,
        "energy_basis": basis,
        "energy_source": energy_source,
        "facility_energy_j": energy * pue if energy is not None and chosen else None,
        "co2_g": co2(energy),
        "estimated_co2_g_apart": co2(estimated_run),  # estimated components not in co2_g (measured headline)
        "generation_co2_g": co2(gen.get("energy_j")),
        "co2_g_per_output_token": per(co2(gen.get("energy_j")), n_out),
    }

