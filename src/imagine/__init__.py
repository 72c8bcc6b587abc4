"""Imagine: a self-hostable video-generation API (the Grok Imagine API contract)."""

__version__ = "0.1.0"
