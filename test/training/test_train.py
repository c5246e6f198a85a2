"""Training: determinism, an honest short CPU training run, resume, and the CLI."""

import argparse

import pytest
import torch

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.checkpoint import load_checkpoint
from sphere_reg_ros.core.sampling import split_seed
from sphere_reg_ros.core.similarity import SimilarityConfig
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.training.cli import add_benchmark_parser, add_train_parser, run_train
from sphere_reg_ros.training.dataset import TrainingScene
from sphere_reg_ros.training.losses import regressor_loss
from sphere_reg_ros.training.train import TrainConfig, train

TINY_SIM = SimilarityConfig(channels=4, stem_widths=(4, 8, 8), model_dim=8, heads=2)


def _config(**kw) -> TrainConfig:
    base = dict(
        resolution=32,
        spacing_mm=8.0,
        backbone="test_resnet",
        similarity=TINY_SIM,
        batch_size=16,
        sim_batch_size=4,
        lr=2e-3,
        warmup_steps=10,
        pool_size=512,
        initial_pool=32,
        initial_sim_pool=4,
        n_val=16,
        n_val_sim=4,
        val_every_steps=1000,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_is_deterministic_for_a_seed(small_ct, tmp_path):
    ct, labels, structures = small_ct
    states = []
    for run in range(2):
        res = train(
            ct,
            _config(max_steps=3),
            labels=labels,
            structures=structures,
            out=tmp_path / f"run{run}.pt",
            progress=False,
        )
        assert res.steps == 3
        states.append(
            {
                **res.regressor.state_dict(),
                **{f"s.{k}": v for k, v in res.similarity.state_dict().items()},
            }
        )
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    other = train(
        ct, _config(max_steps=3, seed=1), labels=labels, structures=structures, progress=False
    )
    assert not torch.equal(other.regressor.head.weight, states[0]["head.weight"])


def test_bad_training_configs():
    with pytest.raises(ValueError, match="max_steps or budget_s"):
        TrainConfig()
    with pytest.raises(ValueError, match="divisible"):
        _config(max_steps=1, resolution=30)
    with pytest.raises(ValueError, match="nothing to train"):
        _config(max_steps=1, train_regressor=False, train_similarity=False)


def test_similarity_only_training_trains_and_renders_nothing_for_the_regressor(small_ct):
    """``--train similarity`` (the ablation checkpoints): only similarity batches are trained and
    no regressor DRR pool is rendered."""
    ct, labels, structures = small_ct
    res = train(
        ct,
        _config(max_steps=3, train_regressor=False, sim_every=1, sim_render_every=1),
        labels=labels,
        structures=structures,
        progress=False,
    )
    assert res.steps == 3
    assert (
        res.throughput["samples_trained"] == 3 * 4
    )  # three similarity batches of 4, no regressor batch
    assert (
        res.throughput["drrs_rendered"] == 2 * 4 + 2 * 3
    )  # initial similarity pool + one item a step


@pytest.mark.slow
def test_short_cpu_training_beats_the_initialisation_on_held_out_poses(small_ct, tmp_path):
    """The CI training check: 300 steps, ~35-60 s on 2 CPU cores (a fixed step count, not a time
    budget, keeps it deterministic, hence not flaky); the test poses are neither the training nor
    the validation poses."""
    ct, labels, structures = small_ct
    out = tmp_path / "model.pt"
    res = train(
        ct,
        _config(max_steps=300, val_every_steps=100),
        labels=labels,
        structures=structures,
        out=out,
        progress=False,
    )
    first, last = res.history[0], res.history[-1]
    assert last["loss"] < first["loss"]
    bundle = load_checkpoint(out, ct=ct, geometry=default_geometry(32))
    assert (
        bundle.training["steps"] == res.steps
        and bundle.training["validation"][-1]["loss"] == last["loss"]
    )
    # independent check on the test split, as the shipped model is judged
    scene = TrainingScene.build(ct, bundle.geometry, bundle.pose_distribution, spacing_mm=8.0)
    g = torch.Generator().manual_seed(split_seed("test", 0))
    poses = scene.sample_poses(32, g)
    images = DomainRandomization()(scene.render(poses), g)
    with torch.no_grad():
        trained = regressor_loss(
            bundle.regressor(images).double(),
            poses,
            center=scene.center_world,
            sod_mm=scene.pose_distribution.sod_mm,
        )
    reference = bundle.pose_distribution.reference(bundle.center_world).expand(32, 4, 4)
    untrained = regressor_loss(
        reference, poses, center=scene.center_world, sod_mm=scene.pose_distribution.sod_mm
    )
    assert float(trained) < 0.85 * float(untrained), (float(trained), float(untrained))
    # resume continues from the checkpoint and its optimiser state
    more = train(
        ct,
        _config(max_steps=2),
        labels=labels,
        structures=structures,
        out=out,
        resume=True,
        progress=False,
    )
    assert more.steps == res.steps + 2
    assert load_checkpoint(out).training["steps"] == res.steps + 2


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    add_benchmark_parser(sub)
    return parser.parse_args(argv)


def test_cli_parsers_and_bad_input(tmp_path, capsys):
    args = _parse(
        [
            "train",
            "--out",
            str(tmp_path / "m.pt"),
            "--budget-minutes",
            "3",
            "--resolution",
            "128",
            "--device",
            "cpu",
            "--seed",
            "4",
            "--resume",
            "--force",
        ]
    )
    assert (
        args.func is run_train
        and args.budget_minutes == 3.0
        and args.resolution == 128
        and args.resume
    )
    assert _parse(["benchmark-train", "--cases", "5"]).cases == 5
    assert (
        run_train(
            _parse(["train", "--out", str(tmp_path / "absent.pt"), "--resume", "--max-steps", "1"])
        )
        == 2
    )
    assert "absent.pt does not exist" in capsys.readouterr().err
    assert (
        run_train(
            _parse(
                [
                    "train",
                    "--ct",
                    str(tmp_path / "none.nii"),
                    "--out",
                    str(tmp_path / "m.pt"),
                    "--max-steps",
                    "1",
                ]
            )
        )
        == 2
    )
    assert "none.nii" in capsys.readouterr().err
    ablation = _parse(
        [
            "train",
            "--out",
            str(tmp_path / "m.pt"),
            "--train",
            "similarity",
            "--embedding",
            "euclidean",
            "--regressor-loss",
            "se3",
            "--lr",
            "3e-4",
        ]
    )
    assert (ablation.train, ablation.embedding, ablation.regressor_loss, ablation.lr) == (
        "similarity",
        "euclidean",
        "se3",
        3e-4,
    )
    assert (
        run_train(
            _parse(["train", "--out", str(tmp_path / "m.pt"), "--max-steps", "1", "--lr", "0"])
        )
        == 2
    )
    assert "lr must be finite and > 0" in capsys.readouterr().err
