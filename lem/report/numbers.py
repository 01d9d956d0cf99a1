"""Numbers as lem prints them: a precision that suits their size, their unit, and a dash for a
figure nothing measured (never 0: a reader must not mistake "not measured" for "free")."""

from __future__ import annotations

DASH = "—"


def fmt_num(x: float | int | None, unit: str = "") -> str:
    """A number at a precision that suits its size, with its unit; None is a dash."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        text = f"{x:,}"
    else:
        a = abs(x)
        if a == 0:
            text = "0"
        elif a >= 1000:
            text = f"{x:,.0f}"
        elif a >= 100:
            text = f"{x:.1f}"
        elif a >= 1:
            text = f"{x:.2f}"
        else:
            text = f"{x:#.3g}"  # three significant digits, trailing zeros kept: 0.100, 0.0123
    return f"{text} {unit}" if unit else text


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return DASH
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_si(x: float | None, unit: str) -> str:
    """Large counts with an SI prefix: 1.23 TFLOP."""
    if x is None:
        return DASH
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"
