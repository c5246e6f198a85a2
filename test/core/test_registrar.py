"""Registrar: end to end on a small CT, bad input as a status, batching, models, rendering."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from sphere_reg_ros.core import models
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.checkpoint import default_checkpoint_path
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig, resolve_device
from sphere_reg_ros.core.result import Status

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GEOMETRY = CarmGeometry(
    sdd=1020.0, height=64, width=64, delx=6.0, dely=6.0
)  # image at 2x the resolution


def _mtre(registrar, pose, true):
    """mTRE (mm) on landmarks 60 mm around the CT centre."""
    pts = registrar.center_world + np.array([[60.0, 0, 0], [0, 60, 0], [0, 0, 60], [-40, -40, -40]])
    return float(
        mtre(torch.as_tensor(pose)[None], torch.as_tensor(true)[None], torch.as_tensor(pts))
    )


def test_registers_a_rendered_image(registrar, case):
    image, true, init = case
    assert image.shape == (64, 64) and image.dtype == np.float32 and np.isfinite(image).all()
    res = registrar.register(image, GEOMETRY, init)
    assert res.ok, res.message
    assert _mtre(registrar, init, true) > 5.0
    assert _mtre(registrar, res.pose, true) < 1.0
    assert set(res.timings) >= {"regressor", "lm", "total"} and res.timings["regressor"] == 0.0
    assert res.pose.shape == (4, 4) and res.covariance.shape == (6, 6)
    assert res.cost < res.initial_cost and res.iterations > 0 and res.history


def test_fine_only_skips_the_coarse_scales_when_tracking(registrar, case, offset_pose):
    image, true, _ = case
    near = offset_pose(
        true, registrar.center_world, [0.1, 0.0, -0.1], [0.5, 0.2, 0.0]
    )  # one frame of motion
    full = registrar.register(image, GEOMETRY, near)
    fine = registrar.register(image, GEOMETRY, near, fine_only=True)
    assert full.ok and fine.ok, (full.message, fine.message)
    assert {h["scale"] for h in full.history} == {16, 32}
    assert {h["scale"] for h in fine.history} == {32}
    assert (
        registrar.tracking_solver.config.window_margin_mm < registrar.solver.config.window_margin_mm
    )
    assert fine.iterations < full.iterations
    assert _mtre(registrar, fine.pose, true) < 0.5


def test_a_registration_starting_where_the_last_ended_reuses_its_render(
    registrar, case, monkeypatch, offset_pose
):
    """Tracking: the DRR and Jacobian at the start pose were rendered by the previous tracking
    registration (the first one after a cold start renders it: tracking uses its own, narrower
    sampling window)."""
    from sphere_reg_ros.core.drr import DrrRenderer

    image, true, init = case
    cold = registrar.register(image, GEOMETRY, init)
    first = registrar.register(image, GEOMETRY, np.array(cold.pose, copy=True), fine_only=True)
    assert first.ok, first.message
    calls = []
    real = DrrRenderer.render_with_jacobian
    start = torch.as_tensor(first.pose)

    def counting(self, pose, *a, **k):  # counts real renders of exactly the start pose
        calls.append(
            pose.shape[0] == 1 and torch.allclose(pose[0].to(torch.float64), start, atol=1e-4)
        )
        return real(self, pose, *a, **k)

    monkeypatch.setattr(DrrRenderer, "render_with_jacobian", counting)
    again = registrar.register(image, GEOMETRY, np.array(first.pose, copy=True), fine_only=True)
    assert again.ok, again.message
    assert not any(calls), "the start pose was rendered again"
    assert _mtre(registrar, again.pose, first.pose) < 0.1
    calls.clear()
    moved = offset_pose(first.pose, registrar.center_world, [0.0, 0.0, 0.0], [0.3, 0.0, 0.0])
    start = torch.as_tensor(moved)
    registrar.register(image, GEOMETRY, moved, fine_only=True)
    assert any(calls), "another start pose must be rendered"


def test_converged_step_stops_before_another_render(registrar, case):
    """A step below the tolerance ends the scale without rendering its trial pose."""
    image, true, _ = case
    res = registrar.register(image, GEOMETRY, true, fine_only=True)
    assert res.status is Status.CONVERGED and res.message.startswith("step below tolerance"), (
        res.message
    )
    cfg = registrar.config
    # one history entry per rendered trial: none of them was a step below the tolerance
    trials = [h for h in res.history if h["iteration"] > 0]
    assert trials and all(
        h["step_mm"] >= cfg.step_tol_mm or h["step_rad"] >= cfg.step_tol_rad for h in trials
    )


@pytest.mark.parametrize(
    "image, needle",
    [
        (np.full((64, 64), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((48, 64), dtype=np.float32), "geometry"),
        (np.zeros((64, 64), dtype=np.uint16), "float"),
        (np.ones((64, 64), dtype=np.float32), "constant"),
        (np.zeros((2, 64, 64), dtype=np.float32), "2-D"),
        ("not an image", "numpy"),
        (None, "numpy"),
    ],
)
def test_bad_images_give_invalid_input(registrar, image, needle):
    res = registrar.register(image, GEOMETRY, registrar.default_pose())
    assert res.status == Status.INVALID_INPUT
    assert needle in res.message
    assert not res.ok and np.isnan(res.covariance).all()


@pytest.mark.parametrize(
    "pose, needle",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.eye(3), "4x4"),
        (2 * np.eye(4), "rigid"),
        ("x", "numeric"),
    ],
)
def test_bad_initial_poses_and_geometry_give_invalid_input(registrar, case, pose, needle):
    image = case[0]
    res = registrar.register(image, GEOMETRY, pose)
    assert res.status == Status.INVALID_INPUT and needle in res.message
    assert registrar.register(image, "not a geometry").status == Status.INVALID_INPUT


def test_batch_mixes_good_and_bad_images(registrar, case):
    image, true, init = case
    bad = image.copy()
    bad[3, 3] = np.inf
    results = registrar.register_batch([image, bad, image], GEOMETRY, [init, init, init])
    assert [r.status == Status.INVALID_INPUT for r in results] == [False, True, False]
    for r in (results[0], results[2]):
        assert r.ok
        assert _mtre(registrar, r.pose, true) < 1.0


def test_without_initial_pose_starts_from_the_ap_view(registrar, case):
    res = registrar.register(case[0], GEOMETRY)
    assert "AP view" in res.message
    assert res.status != Status.INVALID_INPUT


def test_non_square_images_keep_the_field_of_view(registrar):
    g = CarmGeometry(sdd=1020.0, height=48, width=64, delx=6.0, dely=6.0, x0=3.0)
    rg = registrar.registration_geometry(g)
    assert (rg.height, rg.width) == (32, 43)
    assert rg.width * rg.delx == pytest.approx(g.width * g.delx) and rg.x0 == g.x0
    img = registrar.render(registrar.default_pose(), g)
    assert img.shape == (48, 64)
    res = registrar.register(img, g, registrar.default_pose())
    # registration pixels of 9 mm here (32x43 on a 384 mm detector): 2 mm is a quarter pixel
    assert res.ok and _mtre(registrar, res.pose, registrar.default_pose()) < 2.0


def test_renders_large_geometries_at_the_capped_size(registrar):
    big = CarmGeometry(sdd=1020.0, height=600, width=600, delx=0.64, dely=0.64)
    img = registrar.render(registrar.default_pose(), big)
    assert img.shape == (600, 600) and np.isfinite(img).all() and img.max() > 0
    with pytest.raises(ValueError):
        registrar.render(np.full((4, 4), np.nan), big)


def test_from_files_reads_a_ct_and_goes_learning_free(tmp_path, ct8, offset_pose):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct8.data, ct8.affine), str(path))
    reg = Registrar.from_files(
        str(path), None, RegistrarConfig(resolution=16, scales=(1.0,)), spacing_mm=8.0
    )
    assert not reg.learned and "learning-free" in reg.source
    true = reg.default_pose()
    init = offset_pose(true, reg.center_world, [1.0, -1.0, 0.5], [3.0, -2.0, 2.0])
    res = reg.register(reg.render(true, GEOMETRY), GEOMETRY, init)
    # converged (a quality gate may still reject a 16 px registration: that is the gates' business)
    assert res.status in (Status.CONVERGED, Status.REJECTED) and "rejected_by" not in res.message, (
        res.message
    )
    assert _mtre(reg, res.pose, true) < _mtre(reg, init, true)


def test_a_tiny_untrained_similarity_net_and_regressor_run_end_to_end(ct8, case):
    torch.manual_seed(0)
    sim = models.SimilarityNet(
        models.SimilarityConfig(channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2)
    )
    reg_net = models.PoseRegressor(
        models.RegressorConfig("resnet10t", 32, 32), center_world=ct8.center_world
    )
    reg = Registrar(
        ct8,
        similarity=sim,
        regressor=reg_net,
        config=RegistrarConfig(resolution=32, scales=(0.5, 1.0), max_iterations=4),
        spacing_mm=8.0,
    )
    image, true, init = case
    res = reg.register(image, GEOMETRY, init)
    assert res.status != Status.INVALID_INPUT, res.message
    assert (
        np.isfinite(res.pose).all() and math.isfinite(res.cost) and res.timings["regressor"] == 0.0
    )
    res = reg.register(image, GEOMETRY)  # initial pose from the (untrained) regressor
    assert "regressor" in res.message and res.timings["regressor"] > 0
    assert np.isfinite(res.pose).all()
    bad = reg.register(np.full((64, 64), np.nan, dtype=np.float32), GEOMETRY)
    assert bad.status == Status.INVALID_INPUT


def test_hypotheses_rotate_about_the_carm_axes_through_the_ct_centre(ct8):
    reg = Registrar(
        ct8,
        config=RegistrarConfig(resolution=32, restarts=6, restart_rotation_deg=10.0),
        spacing_mm=8.0,
    )
    pose = reg.default_pose()
    hyps = reg.hypotheses(pose)
    assert hyps.shape == (6, 4, 4)
    c = np.append(reg.center_world, 1.0)
    for h in hyps:
        D = h @ np.linalg.inv(pose)
        angle = math.degrees(math.acos(np.clip((np.trace(D[:3, :3]) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(10.0, abs=1e-6)
        np.testing.assert_allclose(D @ c, c, atol=1e-9)  # the CT centre stays put
    assert len({tuple(np.round(h, 6).ravel()) for h in hyps}) == 6
    with pytest.raises(ValueError, match="restarts"):
        RegistrarConfig(restarts=7)


def test_a_failed_registration_restarts_and_keeps_the_lowest_cost(ct8, case):
    """Started 10° off about the C-arm's x axis with one LM iteration per scale, the run cannot get
    there; one of the hypotheses is the truth itself, and scoring all ends picks it."""
    image, true, _ = case
    cfg = dict(resolution=32, max_iterations=1, restart_rotation_deg=10.0, restart_cost_ratio=1e-9)
    reg = Registrar(ct8, config=RegistrarConfig(**cfg, restarts=3), spacing_mm=8.0)
    start = reg.hypotheses(true)[
        2
    ]  # -10° about x; its own +10° hypothesis (the first) is the truth
    np.testing.assert_allclose(reg.hypotheses(start)[0], true, atol=1e-9)
    plain = Registrar(ct8, config=RegistrarConfig(**cfg, restarts=0), spacing_mm=8.0).register(
        image, GEOMETRY, start
    )
    res = reg.register(image, GEOMETRY, start)
    assert "restarted from 3 hypotheses" in res.message and "hypothesis 1 kept" in res.message
    assert _mtre(reg, res.pose, true) < 1.0 < _mtre(reg, plain.pose, true)


def test_resolve_device_accepts_auto_cpu_and_cuda_and_names_the_problem():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' requested but CUDA is not available"):
            resolve_device("cuda:1")


def test_the_shipped_checkpoint_registers_the_example_ct(example_ct, offset_pose):
    """``from_checkpoint``: the shipped model on its CT, at the spacing and ray step it was trained
    with, brings a 5 mm / 3° start closer to the truth."""
    reg = Registrar.from_checkpoint(
        example_ct[0], str(default_checkpoint_path()), RegistrarConfig(max_iterations=8)
    )
    assert reg.learned and reg.spacing_mm == reg.bundle.working_spacing_mm == 2.0
    assert reg.config.ray_step_mm == reg.bundle.training["step_mm"]
    assert reg.model_geometry == reg.bundle.geometry and "model_example_ct_64.pt" in reg.source
    geometry = reg.bundle.geometry
    true = reg.default_pose()
    init = offset_pose(true, reg.center_world, [2.0, -1.0, 1.5], [3.0, -3.0, 2.0])
    res = reg.register(reg.render(true, geometry), geometry, init)
    assert res.status != Status.INVALID_INPUT, res.message
    assert _mtre(reg, res.pose, true) < 0.5 * _mtre(reg, init, true)


def test_polish_refines_a_learned_end_on_the_learning_free_residuals(ct8, case):
    """``polish``: each image is registered again by exactly the learning-free registrar from the
    learned end, which the message says, and the result is judged on the learning-free residuals."""
    from sphere_reg_ros.core.models import SimilarityConfig, SimilarityNet

    torch.manual_seed(0)
    sim = SimilarityNet(
        SimilarityConfig(channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2)
    )
    image, true, init = case
    runs = {}
    for polish in (False, True):
        cfg = RegistrarConfig(resolution=32, scales=(0.5, 1.0), max_iterations=12, polish=polish)
        reg = Registrar(ct8, similarity=sim, config=cfg, spacing_mm=8.0)
        runs[polish] = reg.register(image, GEOMETRY, init)
    plain, polished = runs[False], runs[True]
    assert "polished by the learning-free LM" in polished.message, polished.message
    assert "polished" not in plain.message
    free = Registrar(
        ct8,
        config=RegistrarConfig(resolution=32, scales=(0.5, 1.0), max_iterations=12),
        spacing_mm=8.0,
    )
    expected = free.register(image, GEOMETRY, plain.pose)
    np.testing.assert_allclose(polished.pose, expected.pose, atol=1e-6)
    assert polished.status is expected.status is Status.CONVERGED, polished.message
    assert polished.iterations == plain.iterations + expected.iterations
    assert _mtre(reg, polished.pose, true) < 1.0  # 32 px of an 8 mm CT
    assert polished.normalised_cost == pytest.approx(expected.normalised_cost, rel=1e-6)
    assert polished.timings["total"] > expected.timings["total"]
    # tracking registrations are not polished
    assert "polished" not in reg.register(image, GEOMETRY, polished.pose, fine_only=True).message
    with pytest.raises(ValueError, match="polish"):
        RegistrarConfig(polish="yes")
