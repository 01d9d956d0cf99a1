"""lem's configuration: option vocabularies (types), the schema per group (schema), the checks (checks, rules)."""
