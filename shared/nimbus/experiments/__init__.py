"""A/B testing: experiments, deterministic assignment, exposures and outcomes, statistics."""
