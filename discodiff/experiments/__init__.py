"""Reproducible experiments built on the library's public API (see docs/toy2d.md)."""
