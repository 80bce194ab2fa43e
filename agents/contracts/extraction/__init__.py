"""The extraction pipeline's shared models: collections, plans, baselines, payloads and phases."""
