"""Stand-in package (see lie_learn/__init__.py)."""
