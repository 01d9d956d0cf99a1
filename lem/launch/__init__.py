"""How a validated job runs: inline, in an engine worker process, or as rank processes; GPU leases
and the guard against parallel jobs sharing a GPU. Calls ``lem.pipeline`` for the measured run."""
