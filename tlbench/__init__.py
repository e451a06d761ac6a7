"""tlbench: transfer-learning benchmarks on mini-ImageNet.

Importing the package is cheap: torch and timm load only when a command needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]


def __getattr__(name: str) -> object:
    """Load `tlbench.load_model` on first use, so `import tlbench` does not import torch."""
    if name == "load_model":
        from tlbench.models import load_model

        return load_model
    raise AttributeError(f"module 'tlbench' has no attribute {name!r}")
