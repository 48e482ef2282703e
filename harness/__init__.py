"""Long-context data construction harness."""
__version__ = "0.1.0"
