"""Fixtures of the dataset tests: the scene and the HDF5 files written from it (h5_layouts.py)."""

from h5_layouts import deepfluoro, ljubljana, scene  # noqa: F401
