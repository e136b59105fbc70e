"""``rats estimate``: GPU memory per rank for a config, from parameter counts and activation tracing,
before any weights are downloaded.

May import: ``rats_core.training`` (to build components) and everything below it. Never ``cli``.
"""
