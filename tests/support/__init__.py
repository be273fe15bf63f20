"""Test infrastructure: real Docker engines (engines.py) and tiny images (images.py)."""
