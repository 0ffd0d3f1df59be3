"""PerFusion: personalized text-to-image generation for e-commerce (arXiv 2503.22182)."""

__version__ = "0.2.0"
