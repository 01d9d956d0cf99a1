"""Checks a run can make on its own request records when they carry output token ids.

Pure functions over the records as read back (plain dicts, ``lem.results.reader``): records
without ``output_token_ids`` (``run.record_token_ids`` off, or written before the field
existed) are left out, and a check that has nothing to look at is null, never true or 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Iterable


def greedy_from_config(config: Mapping[str, Any] | None) -> bool | None:
    """True when the resolved config decoded greedily (``decoder.do_sample`` false); None when unknown."""
    decoder = config.get("decoder") if isinstance(config, Mapping) else None
    do_sample = decoder.get("do_sample") if isinstance(decoder, Mapping) else None
    return (not do_sample) if isinstance(do_sample, bool) else None


def token_id_checks(requests: Iterable[dict[str, Any]], *, greedy: bool | None) -> dict[str, Any]:
    """Token accounting and determinism from the records' ``output_token_ids``.

    - ``ids_match_output_tokens``: every record with ids has ``len(ids) == output_tokens``
      (null when no record has ids); ``mismatched_request_ids`` lists those that do not.
    - ``deterministic_across_cycles``: with greedy decoding (``greedy``, decoder ``do_sample``
      false) and a request served in more than one cycle, whether every such request produced
      the same ids in every cycle; null when sampling (or not known) or when no request repeats.
      ``nondeterministic_request_ids`` lists those that differed.
    """
    with_ids = [r for r in requests if r.get("output_token_ids") is not None]
    mismatched = sorted({int(r["request_id"]) for r in with_ids if len(r["output_token_ids"]) != r["output_tokens"]})
    by_request: dict[int, list[list[int]]] = defaultdict(list)
    for r in with_ids:
        by_request[int(r["request_id"])].append(list(r["output_token_ids"]))
    repeated = {rid: runs for rid, runs in by_request.items() if len(runs) > 1}
    differing = sorted(rid for rid, runs in repeated.items() if any(ids != runs[0] for ids in runs[1:]))
    checks_determinism = greedy is True and bool(repeated)
    return {
        "records_with_token_ids": len(with_ids),
        "ids_match_output_tokens": (not mismatched) if with_ids else None,
        "mismatched_request_ids": mismatched,
        "repeated_requests": len(repeated) if checks_determinism else None,
        "deterministic_across_cycles": (not differing) if checks_determinism else None,
        "nondeterministic_request_ids": differing if checks_determinism else [],
    }


def token_id_warnings(checks: Mapping[str, Any]) -> list[str]:
    """One line per failed check, for the summary's warnings."""
    warnings = []
    if checks.get("ids_match_output_tokens") is False:
        ids = checks["mismatched_request_ids"]
        warnings.append(f"{len(ids)} request records have output_token_ids whose length is not output_tokens (request_id {ids[:5]})")
    if checks.get("deterministic_across_cycles") is False:
        ids = checks["nondeterministic_request_ids"]
        warnings.append(f"greedy decoding gave different tokens across cycles for {len(ids)} of {checks['repeated_requests']} requests (request_id {ids[:5]})")
    return warnings
