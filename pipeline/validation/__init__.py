"""deployc.validation: holding artifacts to the budget. The per-artifact gate run on the artifact's own runtime
(gate), build-level gates such as int8 latency (gates), accuracy remedies that re-emit a failed int8 artifact
(remedies) and `validate-config`'s preflight.

May import: deployc.compiler, deployc.data, deployc.core, deployc.storage, deployc.errors."""
