"""diffheads: Diffused Heads talking-face diffusion models, trained, sampled and evaluated."""

__version__ = "0.1.0"
