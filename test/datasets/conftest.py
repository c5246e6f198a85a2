"""Fixtures of the dataset tests: the scene the HDF5 files are written from (h5_layouts.py)."""

from h5_layouts import scene  # noqa: F401
