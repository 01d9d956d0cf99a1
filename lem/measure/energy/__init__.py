"""Energy measurement: named windows over NVML (GPU), RAPL (CPU/DRAM) and CodeCarbon (estimates, CO2).

Usable without Hydra::

    from lem.measure.energy import EnergyMeter

    with EnergyMeter.from_config(EnergyConfig(), cuda_device_indices=[0]) as meter:
        meter.begin_window("work")
        ...
        window = meter.end_window("work")
    print(window.readings)

Light to import: pynvml and codecarbon are imported only when a meter starts.
"""

from lem.measure.energy.meter import EnergyMeter, PowerSample, Window

__all__ = ["EnergyMeter", "PowerSample", "Window"]
