"""Pure IR -> IR passes: one registry (`registry.REGISTRY`), pipelines per target (`pipeline.PIPELINES`),
and `pipeline.compile(module, target, passes)` which runs them with verification and a report."""
