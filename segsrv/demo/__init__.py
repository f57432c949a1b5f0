"""Synthetic demo shop ("segsrv demo-data"): a deterministic pet-supplies retailer.

See :func:`segsrv.demo.generate.generate_demo` and docs/demo.md.
"""

from segsrv.demo.generate import generate_demo

__all__ = ["generate_demo"]
