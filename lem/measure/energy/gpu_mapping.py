"""Which NVML device meters which CUDA device: ``CUDA_VISIBLE_DEVICES`` parsed as the CUDA driver does, torch's UUIDs.

CUDA device indices are not NVML indices: CUDA renumbers the devices listed in
``CUDA_VISIBLE_DEVICES`` (indices, ``GPU-`` UUID prefixes or ``MIG-`` ids) from 0, and
orders them fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, while NVML counts every
GPU in PCI order. When torch has CUDA up, its device UUID decides; otherwise the variable is
parsed the way the CUDA driver does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lem.errors import LemError
from lem.measure.cuda import cuda_in_use


@dataclass
class GpuTarget:
    """One CUDA device resolved to the NVML handle that meters it."""

    cuda_index: int
    handle: Any  # the physical GPU (the parent of a MIG instance)
    uuid: str  # the physical GPU's UUID
    mig_uuid: str | None = None  # set when the CUDA device is a MIG instance
    how: str = ""  # how the mapping was made, for the record


def parse_visible_devices(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as tokens; None when unset (all devices visible)."""
    if value is None:
        return None
    return [tok.strip() for tok in value.split(",")]


def resolve_gpus(
    nvml: Any, cuda_indices: Sequence[int], env: Mapping[str, str] | None = None, torch_uuids: Mapping[int, str] | None = None
) -> tuple[list[GpuTarget], list[str]]:
    """Map CUDA device indices to NVML handles; return the targets and warnings.

    ``torch_uuids`` (CUDA index -> UUID without the ``GPU-`` prefix, from torch when CUDA is
    initialised) wins when NVML knows the UUID; otherwise ``CUDA_VISIBLE_DEVICES`` is parsed
    like the CUDA driver does: entries up to the first invalid one, indices into NVML's list,
    UUIDs matched by unique prefix, ``MIG-`` ids resolved to their parent GPU.
    """
    env = os.environ if env is None else env
    warnings: list[str] = []
    count = int(nvml.nvmlDeviceGetCount())
    physical = []
    for i in range(count):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        physical.append((i, h, as_text(nvml.nvmlDeviceGetUUID(h))))

    tokens = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    visible: list[GpuTarget] = []
    if tokens is None:
        visible = [GpuTarget(i, h, uuid, how=f"NVML index {i} (CUDA_VISIBLE_DEVICES unset)") for i, h, uuid in physical]
    else:
        used: set[str] = set()
        for tok in tokens:
            target = _resolve_token(nvml, tok, physical)
            if target is None or (target.mig_uuid or target.uuid) in used:
                break  # CUDA ignores this entry and every one after it
            used.add(target.mig_uuid or target.uuid)
            target.cuda_index = len(visible)
            visible.append(target)
    order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    names = {as_text(nvml.nvmlDeviceGetName(h)) for _, h, _ in physical}
    if order != "PCI_BUS_ID" and len(names) > 1 and (tokens is None or any(t.strip().isdigit() for t in tokens)):
        warnings.append(
            "GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's fastest-first numbering may "
            "differ from NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID so energy is read from the GPU that ran the work"
        )

    targets: list[GpuTarget] = []
    for index in cuda_indices:
        uuid = (torch_uuids or {}).get(index)
        by_uuid = next(((h, u) for _, h, u in physical if uuid and u.lower() == f"gpu-{uuid}".lower()), None)
        if by_uuid is not None:
            targets.append(GpuTarget(index, by_uuid[0], by_uuid[1], how="torch device UUID"))
            continue
        if not 0 <= index < len(visible):
            shown = env.get("CUDA_VISIBLE_DEVICES")
            raise LemError(
                f"CUDA device {index} has no NVML device: CUDA_VISIBLE_DEVICES={shown if shown is not None else '(unset)'} "
                f"makes {len(visible)} device(s) visible out of {count}"
            )
        t = visible[index]
        targets.append(GpuTarget(index, t.handle, t.uuid, t.mig_uuid, t.how))
    seen: dict[str, int] = {}
    for t in targets:
        if t.uuid in seen:
            warnings.append(f"cuda:{seen[t.uuid]} and cuda:{t.cuda_index} are on the same physical GPU {t.uuid}: its energy is counted once, under cuda:{seen[t.uuid]}")
        seen.setdefault(t.uuid, t.cuda_index)
    unique = [t for t in targets if seen[t.uuid] == t.cuda_index]
    for t in unique:
        if t.mig_uuid:
            warnings.append(
                f"cuda:{t.cuda_index} is MIG instance {t.mig_uuid}: NVML meters only the whole GPU {t.uuid}, so its "
                "energy includes every other instance on that GPU"
            )
    return unique, warnings


def _resolve_token(nvml: Any, tok: str, physical: list[tuple[int, Any, str]]) -> GpuTarget | None:
    if tok.isdigit():
        i = int(tok)
        if i >= len(physical):
            return None
        _, h, uuid = physical[i]
        return GpuTarget(-1, h, uuid, how=f"NVML index {i} (CUDA_VISIBLE_DEVICES={tok})")
    low = tok.lower()
    if low.startswith("mig-gpu-"):  # legacy MIG-GPU-<uuid>/<gi>/<ci>
        parent = _by_prefix(physical, tok[4:].split("/")[0])
        return None if parent is None else GpuTarget(-1, parent[1], parent[2], mig_uuid=tok, how="legacy MIG id")
    if low.startswith("mig-"):
        for _, h, uuid in physical:
            for mig_uuid in mig_uuids(nvml, h):
                if mig_uuid.lower().startswith(low):
                    return GpuTarget(-1, h, uuid, mig_uuid=mig_uuid, how=f"MIG id {tok}")
        return None
    prefix = tok if low.startswith("gpu-") else f"GPU-{tok}"
    found = _by_prefix(physical, prefix)
    return None if found is None else GpuTarget(-1, found[1], found[2], how=f"UUID {tok}")


def _by_prefix(physical: list[tuple[int, Any, str]], prefix: str) -> tuple[int, Any, str] | None:
    matches = [p for p in physical if p[2].lower().startswith(prefix.lower())]
    return matches[0] if len(matches) == 1 else None  # an ambiguous prefix is invalid for CUDA too


def mig_uuids(nvml: Any, handle: Any) -> list[str]:
    try:
        n = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception:
        return []
    out = []
    for j in range(n):
        try:
            out.append(as_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j))))
        except Exception:  # an empty MIG slot
            continue
    return out


def torch_cuda_uuids(indices: Sequence[int]) -> dict[int, str]:
    """UUIDs of CUDA devices from torch, only when torch is imported and CUDA already initialised."""
    out: dict[int, str] = {}
    try:
        cuda = cuda_in_use()
        if cuda is None:
            return out
        for i in indices:
            uuid = getattr(cuda.get_device_properties(i), "uuid", None)
            if uuid is not None:
                out[i] = str(uuid)
    except Exception:
        return {}
    return out


def uuid_matches(nvml_uuid: str, torch_uuid: str) -> bool:
    """NVML's ``GPU-``/``MIG-`` UUID against torch's (which has no prefix, or sometimes has one)."""
    bare = torch_uuid.lower().removeprefix("gpu-").removeprefix("mig-")
    return nvml_uuid.lower().split("-", 1)[-1] == bare


def same_device(target: GpuTarget, torch_uuid: str) -> bool:
    return uuid_matches(target.uuid, torch_uuid) or (target.mig_uuid is not None and uuid_matches(target.mig_uuid, torch_uuid))


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
