"""ternc's version, in a module that imports nothing (backends record it without importing the package root)."""

__version__ = "0.1.0"
