"""Pure IR -> IR passes: one registry (`registry.REGISTRY`), the pipelines as plain lists
(`pipeline.REFERENCE_PIPELINE`, ...; the target table `ternc.targets` says which target runs which),
and `pipeline.compile(module, passes)` which runs one with verification and a report."""
