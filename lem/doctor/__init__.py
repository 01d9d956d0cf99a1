"""``lem doctor``: what this machine can measure, what lem falls back to, and the fix for each missing piece."""
