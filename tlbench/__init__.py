"""tlbench: transfer-learning benchmarks on mini-ImageNet.

Importing the package is cheap: torch and timm load only when a command needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
