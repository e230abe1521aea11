"""camegrad_mini: the companion package of the book *Gradient dynamics in multi-task learning:
CAME-Grad for radiology report generation*.

The book and the package share one version number: a chapter installs exactly the package
version it was written against (see the first cell of every chapter).
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
