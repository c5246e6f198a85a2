"""``sphere-reg make-benchmark --dataset deepfluoro|ljubljana --data FILE [--specimen N]``: a
benchmark of one specimen's real X-rays (:mod:`.real_benchmark`), plus its CT as NIfTI beside it
(``--ct-out``, default ``<out>_ct.nii.gz``), which the benchmark names as its CT so that
``sphere-reg evaluate --benchmark OUT`` runs unchanged. Exit codes as ``make-benchmark``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from sphere_reg_ros.cli_errors import refuse

__all__ = ["add_dataset_options", "run_real_benchmark"]


def add_dataset_options(p: argparse.ArgumentParser, *, ct_out: bool = True) -> None:
    """``--dataset``, ``--data``, ``--specimen`` (``make-benchmark``, ``train``) and, with
    ``ct_out``, ``--ct-out`` (``make-benchmark``)."""
    p.add_argument(
        "--dataset",
        choices=("deepfluoro", "ljubljana"),
        default=None,
        help="a public dataset's specimen (its CT; for make-benchmark its real X-rays) instead "
        "of --ct (docs/REAL_DATA.md); needs --data",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the dataset's HDF5 file (ipcai_2020_full_res_data.h5, ljubljana.h5); never downloaded",
    )
    p.add_argument(
        "--specimen",
        type=int,
        default=1,
        help="specimen (DeepFluoro 1-6) or patient (Ljubljana 1-10), numbered as diffdrrdata (default 1)",
    )
    if not ct_out:
        return
    p.add_argument(
        "--ct-out",
        type=Path,
        default=None,
        help="where to write the specimen's CT (NIfTI) that the benchmark names "
        "(default: beside --out, <name>_ct.nii.gz)",
    )


def _refused_options(args: argparse.Namespace) -> list[str]:
    """Options of the synthetic form that mean nothing with --dataset."""
    given = [
        ("--ct", args.ct is not None),
        ("--labels", args.labels is not None),
        ("--landmarks", args.landmarks is not None),
        ("--preview", args.preview is not None),
        ("--spacing", args.spacing is not None),
        ("--degradation", args.degradation != "benchmark"),
        ("--views", getattr(args, "views", 1) != 1),
    ]
    return [name for name, on in given if on]


def _write_ct(specimen, path: Path):
    """Write the specimen's CT as NIfTI and read it back (what evaluate will load)."""
    from sphere_reg_ros.core.volume import load_volume

    image = nib.Nifti1Image(specimen.ct.data, specimen.ct.affine)
    image.header.set_data_dtype(np.float32)
    image.set_qform(specimen.ct.affine, code=1)
    image.set_sform(specimen.ct.affine, code=1)
    nib.save(image, str(path))
    return load_volume(path)


def run_real_benchmark(args: argparse.Namespace) -> int:
    """Run the real-data form of ``make-benchmark``; 0, or 2 on bad input (one line on stderr)."""
    from sphere_reg_ros.core.volume import VolumeError
    from sphere_reg_ros.datasets import DatasetError, load_specimen
    from sphere_reg_ros.evaluation.benchmark import (
        BenchmarkError,
        benchmark_checksum,
        save_benchmark,
    )
    from sphere_reg_ros.evaluation.cli import _initial_error
    from sphere_reg_ros.evaluation.real_benchmark import make_real_benchmark

    start = time.perf_counter()
    refused = _refused_options(args)
    if refused:
        return refuse(
            "make-benchmark", f"--dataset takes its images from --data: drop {', '.join(refused)}"
        )
    if args.data is None:
        return refuse("make-benchmark", "--dataset needs --data FILE (the dataset's HDF5 file)")
    out = Path(args.out)
    ct_out = args.ct_out or out.with_name(out.name.removesuffix(".npz") + "_ct.nii.gz")
    try:
        specimen = load_specimen(args.dataset, args.data, args.specimen)
        ct = _write_ct(specimen, ct_out)
        bm = make_real_benchmark(
            specimen,
            ct,
            str(ct_out),
            args.resolution,
            args.seed,
            split=args.split,
            initial_error=_initial_error(args),
            progress=not args.no_progress,
        )
        save_benchmark(out, bm)
    except (DatasetError, BenchmarkError, VolumeError, ValueError, OSError) as exc:
        return refuse("make-benchmark", exc)
    init = bm.initial_mtre_mm
    print(f"benchmark: {bm.n_cases} real X-rays of {args.dataset} {specimen.key} ({args.data})")
    print(
        f"  registration resolution {bm.resolution}x{bm.resolution}, images stored at "
        f"{bm.images.shape[1]}x{bm.images.shape[2]}; {len(bm.landmarks)} landmarks"
    )
    print(f"  initial mTRE {init.min():.1f}-{init.max():.1f} mm ({bm.split}, seed {bm.seed})")
    print(f"  time {time.perf_counter() - start:.1f} s; wrote {out} and its CT {ct_out}")
    print(f"  checksum {benchmark_checksum(bm)}")
    return 0
