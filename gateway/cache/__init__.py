"""The response cache: keys, entries, stores and single-flight; the stage is ``gateway.stages.cache``."""
