"""The pinned small benchmarks: each test benchmark's generator output is compared with a
reference file written once (``test/evaluation/pinned/*.npz``, the benchmark file format).

A benchmark is a fixed instrument: if a generator's output moves, every table made with it stops
being comparable (add a new degradation family instead). The content checksum
(``benchmark_checksum``) hashes the float bits, and those differ in the last bits between CPUs
(vector instruction sets change the order of float sums in rendering: up to ~1e-4 in a
line-integral pixel of ~10 here), so the pin compares the content with tolerances far below any
change of model, ranges or seeds: seeds, settings and landmarks exactly, poses and degradation
parameters to 1e-9 relative, images to 1e-3 (all but 0.1 % of the pixels; a noise draw may
flip) with a mean difference under 1e-5. On one machine the same command gives the same
checksum (tested beside this).

To write a reference after a deliberate new family (never to follow a change of an existing
one): ``save_benchmark(pinned_path(name), bm)`` with the arguments named in the test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sphere_reg_ros.evaluation.benchmark import load_benchmark

PINNED = Path(__file__).parent / "pinned"


def pinned_path(name: str) -> Path:
    return PINNED / f"{name}.npz"


def _close_images(name: str, new: np.ndarray, ref: np.ndarray) -> None:
    assert new.shape == ref.shape, f"{name}: shape {new.shape} vs pinned {ref.shape}"
    diff = np.abs(new.astype(np.float64) - ref.astype(np.float64))
    off = float((diff > 1e-3).mean())
    assert off <= 1e-3 and float(diff.mean()) < 1e-5, (
        f"{name}: the generated pixels moved from the pinned benchmark ({100 * off:.2f} % over "
        f"1e-3, mean {diff.mean():.2e}, max {diff.max():.2e})"
    )


def assert_matches_pinned(bm, name: str) -> None:
    """``bm`` has the content of the pinned benchmark ``name`` (see the module)."""
    ref = load_benchmark(pinned_path(name))
    assert bm.config == ref.config, "the generation settings differ from the pinned benchmark"
    assert (bm.seed, bm.split, bm.resolution) == (ref.seed, ref.split, ref.resolution)
    assert bm.geometry == ref.geometry and bm.render_geometry == ref.render_geometry
    assert list(bm.landmark_names) == list(ref.landmark_names)
    np.testing.assert_array_equal(bm.case_seeds, ref.case_seeds)
    for key in ("poses_true", "poses_init", "initial_mtre_mm", "landmarks"):
        np.testing.assert_allclose(
            getattr(bm, key), getattr(ref, key), rtol=1e-9, atol=1e-9, err_msg=key
        )
    assert set(bm.degradations) == set(ref.degradations)
    for key in bm.degradations:
        np.testing.assert_allclose(
            bm.degradations[key], ref.degradations[key], rtol=1e-9, atol=1e-12, err_msg=key
        )
    _close_images("images", bm.images, ref.images)
    assert (bm.views is None) == (ref.views is None), "views differ from the pinned benchmark"
    if bm.views is not None:
        _close_images("view images", np.asarray(bm.views.images), np.asarray(ref.views.images))
        np.testing.assert_allclose(bm.views.offsets, ref.views.offsets, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(bm.views.case_seeds, ref.views.case_seeds)
        assert set(bm.views.degradations) == set(ref.views.degradations)
        for key, values in bm.views.degradations.items():
            np.testing.assert_allclose(
                values, ref.views.degradations[key], rtol=1e-9, atol=1e-12, err_msg=key
            )
