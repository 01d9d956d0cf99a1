"""Energy measurement: named windows over NVML (GPU), RAPL (CPU/DRAM) and CodeCarbon (estimates, CO2).

Usable without Hydra::

    from lem.measure.energy import EnergyMeter

    with EnergyMeter.for_devices([0], idle_baseline_s=0) as meter:
        meter.begin_window("work")
        ...
        window = meter.end_window("work")
    print(window.readings)

Modules: ``meter`` (the windows), ``sampler`` (the background reads and the timeline),
``window`` (a window's readings and warnings), ``baseline`` (idle power and its cache),
``sources`` and its implementations ``nvml``, ``rapl``, ``carbon``; ``arithmetic`` (pure).
Light to import: pynvml and codecarbon are imported only when a meter starts.
"""

from lem.measure.energy.meter import EnergyMeter, PowerSample, Window

__all__ = ["EnergyMeter", "PowerSample", "Window"]
