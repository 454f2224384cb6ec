"""The diagnostics engine: explain every key mismatch as a few rules, grouped, with stable codes."""

from keyguard.engine._pipeline import diagnose

__all__ = ["diagnose"]
