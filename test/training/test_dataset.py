"""Training data: exact pose jitter by homography, pools, landmarks, CT fingerprints."""

import numpy as np
import torch

from sphere_reg_ros.core.checkpoint import ct_differences, ct_fingerprint, describe_ct
from sphere_reg_ros.core.geometry import make_pose
from sphere_reg_ros.core.volume import Volume
from sphere_reg_ros.evaluation.cases import default_landmarks
from sphere_reg_ros.training.dataset import (
    DrrPool,
    SimilarityPool,
    jitter_rotations,
    warp_to_pose,
)


def test_homography_jitter_gives_the_drr_of_the_rotated_carm(tiny_scene):
    scene = tiny_scene
    g = torch.Generator().manual_seed(0)
    T = scene.sample_poses(4, g)
    Q = jitter_rotations(4, 2.0, 5.0, g)
    warped = warp_to_pose(scene.render(T, margin=True), Q, scene.geometry, scene.margin)
    direct = scene.render(T @ make_pose(Q, torch.zeros(4, 3, dtype=torch.float64)))
    rel = (warped - direct).norm() / direct.norm()
    assert rel < 0.05, f"relative difference {rel:.3f}"  # bilinear resampling of 24 mm pixels
    # without the jitter the error would be much larger
    plain = scene.render(T)
    plain_rel = (plain - direct).norm() / direct.norm()
    assert plain_rel > 3 * rel, f"{plain_rel:.3f} vs {rel:.3f}"


def test_pools_are_reproducible_and_follow_the_jitter(tiny_scene):
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        pool = DrrPool(tiny_scene, capacity=6)
        pool.add(8, g)  # wraps around
        assert pool.size == 6 and pool.rendered == 8
        draws.append(pool.draw(3, g))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    images, poses = draws[0]
    assert images.shape == (3, 1, 16, 16) and poses.shape == (3, 4, 4)
    g = torch.Generator().manual_seed(6)
    sim = SimilarityPool(tiny_scene, capacity=4)
    sim.add(2, g)
    fixed, true, moving, mposes, jac = sim.draw(3, g)
    assert fixed.shape == moving.shape == (3, 1, 16, 16) and jac.shape == (3, 256, 6)
    offsets = torch.linalg.inv(true) @ mposes  # moving poses lie near the (jittered) truth
    assert (offsets[:, :3, 3].norm(dim=-1) < 400).all()


def test_training_measures_mtre_on_the_benchmark_landmarks(small_ct, tiny_scene):
    ct, labels, structures = small_ct
    names, points = default_landmarks(ct, labels, structures)
    assert tiny_scene.landmark_names == names and np.array_equal(tiny_scene.landmarks, points)
    assert len(names) == len(points) > 5 and points.shape[1] == 3
    names, points = default_landmarks(ct)  # without a label map: a grid inside the body
    assert 1 <= len(points) <= 27 and names[0].startswith("grid_")
    lo, hi = ct.voxel_to_world(np.zeros(3)), ct.voxel_to_world(np.array(ct.shape) - 1.0)
    assert np.all(points >= np.minimum(lo, hi)) and np.all(points <= np.maximum(lo, hi))


def test_ct_fingerprint_changes_with_data_and_grid():
    data = np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32) * 300
    a = Volume(data, np.diag([2.0, 2.0, 3.0, 1.0]), "a.nii")
    fp = ct_fingerprint(a)
    assert fp == ct_fingerprint(Volume(data.copy(), a.affine.copy(), "b.nrrd"))
    assert fp["shape"] == [20, 18, 16] and fp["spacing_mm"] == [2.0, 2.0, 3.0]
    assert describe_ct(fp) == "20x18x16 voxels of 2.00x2.00x3.00 mm"
    assert ct_differences(fp, fp) == []
    changed = data.copy()
    changed[10, 9, 8] += 50.0
    other = ct_fingerprint(Volume(changed, a.affine, "a.nii"))
    assert other["sha256"] != fp["sha256"]
    assert ct_differences(fp, other) == ["same grid but different voxel values"]
    moved = a.affine.copy()
    moved[0, 3] = 1.0
    assert ct_differences(fp, ct_fingerprint(Volume(data, moved, "a.nii"))) == [
        "origin 1x0x0 mm vs 0x0x0 mm"
    ]
    flipped = a.affine.copy()
    flipped[0, 0] = -2.0
    assert ct_differences(fp, ct_fingerprint(Volume(data, flipped, "a.nii"))) == [
        "orientation (direction cosines of the affine) differs"
    ]
