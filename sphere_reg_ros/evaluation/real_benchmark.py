"""Benchmarks from real X-rays: one specimen of DeepFluoro or Ljubljana (:mod:`sphere_reg_ros.datasets`)
in the synthetic benchmark's file format (:mod:`.benchmark_file`), so that ``sphere-reg
evaluate`` runs every method on it unchanged.

Protocol (docs/REAL_DATA.md):

* **Cases**: the specimen's X-rays, in the file's order (DeepFluoro: every projection of the
  specimen; Ljubljana: AP, then lateral), with the dataset's true poses ``T_ct_from_carm``.
* **Images**: each preprocessed as diffdrrdata does (:mod:`sphere_reg_ros.datasets.images`),
  then area-averaged onto one ``2R × 2R`` detector: the largest square field of view (in angle)
  that every X-ray covers, principal point at its centre, source-to-detector distance the median
  of the X-rays'. One pinhole's image maps onto another's with the same source and axes by an
  affine pixel map, so nothing is re-projected and the true poses hold unchanged.
* **Initial poses**: as the synthetic benchmark (:func:`.cases.perturb_poses`: a random
  rotation and translation about the landmarks' centroid scaled to an initial mTRE ~ U[5, 25]
  mm by default), from a generator seeded as in :func:`.benchmark.make_benchmark` (split and seed).
* **Landmarks**: the dataset's 3-D fiducials (world RAS mm); mTRE is measured on them.
* No degradation is simulated: the config's degradation family is ``"real"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.sampling import split_seed
from sphere_reg_ros.core.volume import Volume
from sphere_reg_ros.datasets import Projection, Specimen, load_projection
from sphere_reg_ros.datasets.images import resample_to_geometry
from sphere_reg_ros.evaluation.benchmark import _case_seeds
from sphere_reg_ros.evaluation.benchmark_file import Benchmark, BenchmarkError
from sphere_reg_ros.evaluation.cases import InitialErrorConfig, ct_fingerprint, perturb_poses

__all__ = ["common_geometry", "make_real_benchmark"]

log = logging.getLogger(__name__)


def common_geometry(geometries: Sequence[CarmGeometry], resolution: int) -> CarmGeometry:
    """The ``R × R`` detector seeing the largest square field of view (in ``x/z``, ``y/z``) that
    all ``geometries`` cover, centred on it; SDD the median of theirs."""
    lo, hi = np.full(2, -np.inf), np.full(2, np.inf)
    for g in geometries:
        f, c, n = np.array([g.fx, g.fy]), np.array([g.cx, g.cy]), np.array([g.width, g.height])
        lo, hi = np.maximum(lo, (-0.5 - c) / f), np.minimum(hi, (n - 0.5 - c) / f)
    side = float(np.min(hi - lo)) * (1.0 - 1e-6)  # margin: pixel edges exactly on the border
    if not side > 0:
        raise BenchmarkError("the X-rays' fields of view do not overlap")
    mid = (lo + hi) / 2.0
    sdd = float(np.median([g.sdd for g in geometries]))
    spacing = sdd * side / int(resolution)
    return CarmGeometry(
        sdd=sdd,
        height=int(resolution),
        width=int(resolution),
        delx=spacing,
        dely=spacing,
        x0=float(-mid[0] * sdd),
        y0=float(-mid[1] * sdd),
    )


def _reduced(p: Projection, most: int) -> tuple[np.ndarray, CarmGeometry]:
    """The X-ray block-averaged by an integer factor to at most ~``2 · most`` pixels a side, and
    its geometry (the pixels left over at the bottom and right are dropped)."""
    f = max(1, min(p.image.shape) // (2 * most))
    h, w = p.image.shape[0] // f, p.image.shape[1] // f
    image = p.image[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))
    g = p.geometry
    K = np.array(
        [
            [g.fx / f, 0.0, (g.cx - (f - 1) / 2.0) / f],
            [0.0, g.fy / f, (g.cy - (f - 1) / 2.0) / f],
            [0, 0, 1],
        ]
    )
    return image.astype(np.float32), CarmGeometry.from_intrinsics(K, h, w, sdd=g.sdd)


def make_real_benchmark(
    specimen: Specimen,
    ct: Volume,
    ct_source: str,
    resolution: int = 64,
    seed: int = 0,
    *,
    split: str = "test",
    initial_error: InitialErrorConfig = InitialErrorConfig(),
    projections: Sequence[int] | None = None,
    progress: bool = False,
) -> Benchmark:
    """A benchmark of ``specimen``'s X-rays (all, or the 0-based ``projections``).

    Args:
        ct: the CT the benchmark is registered against (the specimen's, e.g. as written to
            ``ct_source`` and read back); its fingerprint goes in the file.
        ct_source: the CT file ``evaluate`` will read.
        resolution: registration resolution ``R``; images are stored at ``2R``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
        raise BenchmarkError(f"resolution must be an integer >= 4, got {resolution!r}")
    indices = list(range(specimen.n_projections)) if projections is None else list(projections)
    if not indices or any(not 0 <= i < specimen.n_projections for i in indices):
        raise BenchmarkError(
            f"{specimen.key}: projections must be in 0..{specimen.n_projections - 1}, got {indices}"
        )
    reduced, poses, names, flags = [], [], [], []
    for i in tqdm(indices, desc="read X-rays", unit="x-ray", disable=not progress):
        p = load_projection(specimen, i)
        reduced.append(_reduced(p, 2 * resolution))
        poses.append(p.pose)
        names.append(p.name)
        flags.append({k: (v if isinstance(v, str) else bool(v)) for k, v in p.flags.items()})
    geometry = common_geometry([g for _, g in reduced], resolution)
    render_geometry = geometry.resized(2 * resolution)
    images = np.stack([resample_to_geometry(im, g, render_geometry) for im, g in reduced])
    root = split_seed(split, seed)
    true = torch.as_tensor(np.stack(poses), dtype=torch.float64)
    init_gen = torch.Generator().manual_seed(  # seeded as make_benchmark's initial poses
        int(np.random.SeedSequence([root, 2]).generate_state(1)[0])
    )
    init, init_mtre = perturb_poses(true, specimen.landmarks, initial_error, init_gen)
    config = {
        "dataset": specimen.dataset,
        "specimen": specimen.number,
        "specimen_key": specimen.key,
        "data_file": specimen.source,
        "projections": names,
        "flags": flags,
        "source_geometries": [g.to_dict() for _, g in reduced],
        "isocenter_world": [float(x) for x in ct.center_world],
        "initial_error": {**asdict(initial_error), "mtre_mm": list(initial_error.mtre_mm)},
        "degradation": {"family": "real"},
        "split_seed": root,
    }
    log.info("real benchmark: %d X-rays of %s %s", len(indices), specimen.dataset, specimen.key)
    return Benchmark(
        images=images,
        resolution=int(resolution),
        geometry=geometry,
        render_geometry=render_geometry,
        poses_true=true.numpy(),
        poses_init=init.numpy(),
        initial_mtre_mm=init_mtre.numpy(),
        landmarks=np.asarray(specimen.landmarks, dtype=np.float64),
        landmark_names=tuple(specimen.landmark_names),
        ct_source=str(ct_source),
        ct_fingerprint=ct_fingerprint(ct),
        seed=int(seed),
        split=split,
        case_seeds=_case_seeds(root, len(indices)),
        degradations={},
        config=config,
    )
