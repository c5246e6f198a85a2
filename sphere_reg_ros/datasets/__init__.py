"""Readers of the field's public real-image datasets, DeepFluoro and Ljubljana (ROS-free).

They read the HDF5 files in the layouts that diffdrrdata 0.0.7 reads (``ipcai_2020_full_res_data.h5``,
``ljubljana.h5``), never download anything, and return the CT, landmarks and X-rays in the
project's conventions: CT world RAS mm, true poses ``T_ct_from_carm`` in the C-arm optical frame,
:class:`~sphere_reg_ros.core.carm.CarmGeometry` intrinsics. Conventions: docs/REAL_DATA.md.

    specimen = load_specimen("deepfluoro", "ipcai_2020_full_res_data.h5", 1)
    xray = load_projection(specimen, 0)   # .image, .geometry, .pose, .flags, .landmarks_2d
"""

from __future__ import annotations

from pathlib import Path

from .deepfluoro import load_deepfluoro_projection, load_deepfluoro_specimen
from .hdf5 import DATA_SOURCES, DatasetError, Projection, Specimen
from .ljubljana import load_ljubljana_projection, load_ljubljana_specimen

__all__ = [
    "DATASETS",
    "DATA_SOURCES",
    "DatasetError",
    "Projection",
    "Specimen",
    "load_projection",
    "load_specimen",
]

_READERS = {
    "deepfluoro": (load_deepfluoro_specimen, load_deepfluoro_projection),
    "ljubljana": (load_ljubljana_specimen, load_ljubljana_projection),
}
#: The datasets that can be read.
DATASETS = tuple(_READERS)


def load_specimen(dataset: str, path: str | Path, number: int) -> Specimen:
    """Specimen (patient) ``number`` of ``dataset`` from the file ``path`` (1-based, as in
    diffdrrdata). Raises DatasetError for an unknown dataset, a missing or bad file."""
    if dataset not in _READERS:
        raise DatasetError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    return _READERS[dataset][0](path, number)


def load_projection(specimen: Specimen, index: int) -> Projection:
    """X-ray ``index`` (0-based) of ``specimen``, read from its file."""
    return _READERS[specimen.dataset][1](specimen.source, specimen, index)
