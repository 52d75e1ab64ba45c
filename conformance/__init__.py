"""attnspec conformance: the clauses of SPEC.md as code, the pytest plugin and the command line."""
