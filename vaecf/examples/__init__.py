"""Bundled example data (MovieLens latest-small, redistributable under its README)."""
