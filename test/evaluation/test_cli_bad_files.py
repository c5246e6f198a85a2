"""Every ``sphere-reg`` command that reads a file refuses a bad one in one line on stderr.

Table-driven: each row is a command line with one bad file (corrupt, truncated, empty, of the
wrong dimension or type) made in ``tmp_path``, run in-process through ``sphere_reg_ros.cli.main``.
The command must exit with 2 (bad input) and print exactly one line on stderr that starts with
``sphere-reg COMMAND:``, names the file and says what is wrong -- no traceback. The other inputs of
a row are good, small files, and the bad file is refused before any CT is loaded where possible,
so every row takes well under a second.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch

from sphere_reg_ros.cli import build_parser, main
from sphere_reg_ros.cli_errors import EXIT_BAD_INPUT, EXIT_CODES, REGISTER_EXIT_CODES
from sphere_reg_ros.core.checkpoint import default_checkpoint_path
from sphere_reg_ros.evaluation.evaluate_cli import MIN_IMAGE_SIZE


# ----------------------------------------------------------------------------- file makers
def _text(suffix: str, content: bytes = b"this is a text file, not what its name says\n"):
    def make(d: Path) -> Path:
        p = d / f"bad{suffix}"
        p.write_bytes(content)
        return p

    return make


def _empty(suffix: str):
    return _text(suffix, b"")


def _truncated(make_good, keep: float = 0.5):
    """A good file cut to ``keep`` of its length."""

    def make(d: Path) -> Path:
        good = make_good(d)
        data = good.read_bytes()
        p = good.with_name("cut_" + good.name)
        p.write_bytes(data[: int(len(data) * keep)])
        return p

    return make


def _png(h: int = 32, w: int = 32, name: str = "img.png"):
    def make(d: Path) -> Path:
        p = d / name
        mpimg.imsave(p, np.linspace(0, 1, h * w).reshape(h, w), cmap="gray")
        return p

    return make


def _tif(d: Path) -> Path:
    from PIL import Image

    p = d / "img.tif"
    Image.fromarray((np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32)).save(p)
    return p


def _npy(array, allow_pickle: bool = False, name: str = "img.npy"):
    def make(d: Path) -> Path:
        p = d / name
        with open(p, "wb") as fh:  # np.save would append .npy to another suffix
            np.save(fh, array, allow_pickle=allow_pickle)
        return p

    return make


def _dcm(frames: int = 1, pixels: bool = True):
    """A small uncompressed DICOM image (``frames`` > 1: multi-frame; no pixel data if not ``pixels``)."""

    def make(d: Path) -> Path:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if pixels:
            ds.PixelData = (np.arange(32 * 32 * frames) % 500).astype(np.uint16).tobytes()
        p = d / f"img_{frames}_{int(pixels)}.dcm"
        ds.save_as(p, enforce_file_format=True)
        return p

    return make


def _nii(shape=(12, 12, 12), name: str = "vol.nii.gz"):
    def make(d: Path) -> Path:
        p = d / name
        data = np.random.default_rng(0).uniform(-1000, 1000, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), p)
        return p

    return make


def _gz_text(d: Path) -> Path:
    p = d / "notct.nii.gz"
    p.write_bytes(gzip.compress(b"gzip-compressed text, no NIfTI header" * 20))
    return p


def _torch(obj, name: str = "other.pt"):
    def make(d: Path) -> Path:
        p = d / name
        torch.save(obj, p)
        return p

    return make


def _checkpoint_copy(d: Path) -> Path:
    p = d / "model.pt"
    shutil.copyfile(default_checkpoint_path(), p)
    return p


def _npz(**arrays):
    def make(d: Path) -> Path:
        p = d / "other.npz"
        np.savez(p, **arrays)
        return p

    return make


def _benchmark_copy(d: Path) -> Path:
    p = d / "bm.npz"
    shutil.copyfile(GOOD["benchmark"], p)
    return p


# ----------------------------------------------------------------------------- good inputs
GOOD: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def good_files(tmp_path_factory):
    """Small good inputs the rows combine with their bad file: an image, a tiny CT, a benchmark."""
    d = tmp_path_factory.mktemp("good")
    GOOD["image"] = _png(name="good.png")(d)
    GOOD["ct"] = _nii((24, 24, 24), name="ct.nii.gz")(d)
    GOOD["benchmark"] = d / "bm.npz"
    assert (
        main(
            [
                "make-benchmark",
                "--ct",
                str(GOOD["ct"]),
                "--cases",
                "1",
                "--resolution",
                "8",
                "--out",
                str(GOOD["benchmark"]),
                "--no-progress",
            ]
        )
        == 0
    )
    yield GOOD
    GOOD.clear()


REGISTER = ["register", "--out", "{tmp}/out", "--device", "cpu"]
CASES_HEADER = (
    "method,case,mtre_mm,status,normalised_cost,position_std_mm,rejected_by,mahalanobis2\n"
)

# (id, command line with {bad} / {good:image|ct|benchmark} / {tmp}, maker of the bad file, expected text)
ROWS = [
    # ---- register --image: PNG, TIFF, DICOM, NumPy
    (
        "png-text",
        REGISTER + ["--image", "{bad}"],
        _text(".png"),
        "not a readable image (PNG decoder",
    ),
    (
        "png-truncated",
        REGISTER + ["--image", "{bad}"],
        _truncated(_png()),
        "not a readable image (PNG decoder",
    ),
    ("png-empty", REGISTER + ["--image", "{bad}"], _empty(".png"), "empty file"),
    (
        "png-1x1",
        REGISTER + ["--image", "{bad}"],
        _png(1, 1),
        f"at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}",
    ),
    ("png-too-narrow", REGISTER + ["--image", "{bad}"], _png(64, 8), "too small"),
    (
        "tiff-text",
        REGISTER + ["--image", "{bad}"],
        _text(".tif"),
        "not a readable image (TIFF decoder",
    ),
    (
        "tiff-truncated",
        REGISTER + ["--image", "{bad}"],
        _truncated(_tif),
        "not a readable image (TIFF decoder",
    ),
    (
        "dicom-text",
        REGISTER + ["--image", "{bad}"],
        _text(".dcm"),
        "not a readable image (DICOM decoder",
    ),
    (
        "dicom-truncated-pixels",
        REGISTER + ["--image", "{bad}"],
        _truncated(_dcm(), 0.8),
        "DICOM decoder",
    ),
    ("dicom-truncated-header", REGISTER + ["--image", "{bad}"], _truncated(_dcm(), 0.1), "{bad}: "),
    ("dicom-empty", REGISTER + ["--image", "{bad}"], _empty(".dcm"), "empty file"),
    ("dicom-no-pixels", REGISTER + ["--image", "{bad}"], _dcm(pixels=False), "without pixel data"),
    (
        "dicom-multi-frame",
        REGISTER + ["--image", "{bad}"],
        _dcm(frames=3),
        "expected one 2-D image",
    ),
    ("npy-text", REGISTER + ["--image", "{bad}"], _text(".npy"), "not a NumPy .npy file"),
    (
        "npy-truncated",
        REGISTER + ["--image", "{bad}"],
        _truncated(_npy(np.ones((32, 32)))),
        "NumPy .npy decoder",
    ),
    ("npy-empty", REGISTER + ["--image", "{bad}"], _empty(".npy"), "empty file"),
    (
        "npy-pickled",
        REGISTER + ["--image", "{bad}"],
        _npy(np.array([{"a": 1}], dtype=object), True),
        "holds Python objects",
    ),
    (
        "npy-3d",
        REGISTER + ["--image", "{bad}"],
        _npy(np.ones((4, 32, 32))),
        "expected one 2-D image",
    ),
    ("npy-1d", REGISTER + ["--image", "{bad}"], _npy(np.ones(32)), "expected one 2-D image"),
    ("npy-strings", REGISTER + ["--image", "{bad}"], _npy(np.full((32, 32), "a")), "not numbers"),
    (
        "npy-nan",
        REGISTER + ["--image", "{bad}"],
        _npy(np.full((32, 32), np.nan)),
        "NaN or infinite",
    ),
    (
        "npy-is-npz",
        REGISTER + ["--image", "{bad}"],
        _npy(np.ones((32, 32)), name="img.npz"),
        "unsupported image format",
    ),
    (
        "image-unsupported",
        REGISTER + ["--image", "{bad}"],
        _text(".bmp"),
        "unsupported image format",
    ),
    ("image-missing", REGISTER + ["--image", "{tmp}/missing.png"], None, "no such file"),
    # ---- register: the other files (checked before the CT is loaded)
    (
        "pose-text",
        REGISTER + ["--image", "{good:image}", "--init", "{bad}"],
        _text(".json"),
        "not a JSON pose",
    ),
    ("pose-3x3", REGISTER + ["--image", "{good:image}", "--init", "{bad}"], _npy(np.eye(3)), "4x4"),
    (
        "pose-strings",
        REGISTER + ["--image", "{good:image}", "--init", "{bad}"],
        _text(".json", json.dumps([["a"] * 4] * 4).encode()),
        "4x4",
    ),
    (
        "pose-empty",
        REGISTER + ["--image", "{good:image}", "--init", "{bad}"],
        _empty(".json"),
        "empty file",
    ),
    (
        "geometry-text",
        REGISTER + ["--image", "{good:image}", "--geometry", "{bad}"],
        _text(".json"),
        "not a JSON geometry",
    ),
    (
        "geometry-list",
        REGISTER + ["--image", "{good:image}", "--geometry", "{bad}"],
        _text(".json", b"[1, 2]"),
        "expected a JSON object",
    ),
    (
        "geometry-unknown-key",
        REGISTER + ["--image", "{good:image}", "--geometry", "{bad}"],
        _text(".json", b'{"sdd": 1000, "focal": 3}'),
        "not a valid C-arm geometry",
    ),
    (
        "checkpoint-text",
        REGISTER + ["--image", "{good:image}", "--model", "{bad}"],
        _text(".pt"),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "checkpoint-truncated",
        REGISTER + ["--image", "{good:image}", "--model", "{bad}"],
        _truncated(_checkpoint_copy),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "checkpoint-empty",
        REGISTER + ["--image", "{good:image}", "--model", "{bad}"],
        _empty(".pt"),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "checkpoint-other-torch-file",
        REGISTER + ["--image", "{good:image}", "--model", "{bad}"],
        _torch({"weights": torch.zeros(2)}),
        "not a sphere_reg_ros checkpoint",
    ),
    (
        "ct-text",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _text(".nii.gz"),
        "cannot read volume",
    ),
    (
        "ct-gzip-not-nifti",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _gz_text,
        "cannot read volume",
    ),
    (
        "ct-truncated",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _truncated(_nii()),
        "cannot read volume",
    ),
    (
        "ct-2d",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _nii((12, 12)),
        "not a 3-D volume",
    ),
    (
        "ct-nrrd-text",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _text(".nrrd"),
        "cannot read volume",
    ),
    (
        "ct-dicom-text",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _text(".dcm"),
        "cannot read volume",
    ),
    (
        "ct-unsupported",
        REGISTER + ["--image", "{good:image}", "--ct", "{bad}"],
        _text(".txt"),
        "unsupported volume format",
    ),
    # ---- evaluate
    (
        "benchmark-text",
        ["evaluate", "--benchmark", "{bad}"],
        _text(".npz"),
        "not a readable benchmark file",
    ),
    (
        "benchmark-truncated",
        ["evaluate", "--benchmark", "{bad}"],
        _truncated(_benchmark_copy),
        "not a readable benchmark file",
    ),
    (
        "benchmark-empty",
        ["evaluate", "--benchmark", "{bad}"],
        _empty(".npz"),
        "not a readable benchmark file",
    ),
    (
        "benchmark-other-npz",
        ["evaluate", "--benchmark", "{bad}"],
        _npz(images=np.zeros((1, 4, 4))),
        "not a sphere_reg_ros",
    ),
    (
        "benchmark-bare-npy",
        ["evaluate", "--benchmark", "{bad}"],
        _npy(np.zeros(3), name="bm.npz"),
        "not a benchmark file",
    ),
    (
        "evaluate-checkpoint",
        ["evaluate", "--benchmark", "{good:benchmark}", "--model", "{bad}"],
        _text(".pt"),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "evaluate-ablation-checkpoint",
        ["evaluate", "--benchmark", "{good:benchmark}", "--models", "euclidean={bad}"],
        _truncated(_checkpoint_copy),
        "not a checkpoint",
    ),
    (
        "evaluate-ct",
        ["evaluate", "--benchmark", "{good:benchmark}", "--no-model", "--ct", "{bad}"],
        _nii((12, 12)),
        "not a 3-D volume",
    ),
    # ---- make-benchmark
    (
        "make-benchmark-ct",
        ["make-benchmark", "--ct", "{bad}", "--out", "{tmp}/bm.npz"],
        _truncated(_nii()),
        "cannot read volume",
    ),
    (
        "make-benchmark-labels",
        ["make-benchmark", "--ct", "{good:ct}", "--labels", "{bad}", "--out", "{tmp}/bm.npz"],
        _text(".nii"),
        "cannot read volume",
    ),
    (
        "make-benchmark-landmarks-text",
        ["make-benchmark", "--ct", "{good:ct}", "--landmarks", "{bad}", "--out", "{tmp}/bm.npz"],
        _text(".csv", b"a,b\nc,d\n"),
        "{bad}",
    ),
    (
        "make-benchmark-landmarks-binary",
        ["make-benchmark", "--landmarks", "{bad}", "--out", "{tmp}/bm.npz"],
        _text(".json", bytes(range(256))),
        "cannot read",
    ),
    (
        "make-benchmark-landmarks-empty",
        ["make-benchmark", "--landmarks", "{bad}", "--out", "{tmp}/bm.npz"],
        _empty(".json"),
        "{bad}",
    ),
    # ---- train / benchmark-train
    (
        "train-ct",
        ["train", "--ct", "{bad}", "--out", "{tmp}/m.pt", "--device", "cpu"],
        _text(".nrrd"),
        "cannot read volume",
    ),
    (
        "train-labels",
        [
            "train",
            "--ct",
            "{good:ct}",
            "--labels",
            "{bad}",
            "--out",
            "{tmp}/m.pt",
            "--device",
            "cpu",
        ],
        _nii((12, 12, 3, 2)),
        "not a 3-D volume",
    ),
    (
        "train-resume-checkpoint",
        ["train", "--resume", "--out", "{bad}", "--device", "cpu"],
        _truncated(_checkpoint_copy),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "benchmark-train-checkpoint",
        ["benchmark-train", "--checkpoint", "{bad}", "--device", "cpu"],
        _empty(".pt"),
        "corrupt, truncated or not a checkpoint",
    ),
    (
        "benchmark-train-benchmark",
        ["benchmark-train", "--benchmark", "{bad}", "--device", "cpu"],
        _truncated(_benchmark_copy),
        "not a readable benchmark file",
    ),
    (
        "benchmark-train-ct",
        ["benchmark-train", "--ct", "{bad}", "--device", "cpu"],
        _text(".nii"),
        "cannot read volume",
    ),
    # ---- calibrate-trust
    ("cases-empty", ["calibrate-trust", "{bad}"], _empty(".csv"), "empty file"),
    (
        "cases-binary",
        ["calibrate-trust", "{bad}"],
        _text(".csv", bytes(range(128, 256))),
        "not a readable CSV",
    ),
    (
        "cases-other-csv",
        ["calibrate-trust", "{bad}"],
        _text(".csv", b"x,y\n1,2\n"),
        "not a cases.csv",
    ),
    (
        "cases-not-numbers",
        ["calibrate-trust", "{bad}"],
        _text(".csv", (CASES_HEADER + "lm-intensity,0,abc,converged,0.5,1,,1\n").encode()),
        "line 2: mtre_mm is 'abc', not a number",
    ),
    ("cases-missing", ["calibrate-trust", "{tmp}/missing.csv"], None, "no such file"),
]


def _command_line(template: list[str], bad: Path | None, tmp: Path) -> list[str]:
    out = []
    for arg in template:
        arg = arg.replace("{tmp}", str(tmp))
        if bad is not None:
            arg = arg.replace("{bad}", str(bad))
        for key, path in GOOD.items():
            arg = arg.replace(f"{{good:{key}}}", str(path))
        out.append(arg)
    return out


@pytest.mark.parametrize(
    "template, make, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_a_bad_file_is_one_line_on_stderr_and_exit_code_2(
    template, make, expected, tmp_path, capsys
):
    bad = make(tmp_path) if make is not None else None
    argv = _command_line(template, bad, tmp_path)
    named = str(bad) if bad is not None else next(a for a in argv if "missing" in a)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith(f"sphere-reg {argv[0]}: "), err
    assert named in lines[0], err
    assert expected.replace("{bad}", str(bad)) in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was registered


def test_calibrate_trust_exit_code_1_when_no_thresholds_pass(tmp_path, capsys):
    """The rows are good but the job finds nothing: 1 (ran but failed), one line on stderr."""
    rows = "".join(f"lm-intensity,{i},0.2,converged,0.99,20,,1\n" for i in range(5))
    (tmp_path / "cases.csv").write_text(CASES_HEADER + rows)
    assert main(["calibrate-trust", str(tmp_path / "cases.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "sphere-reg calibrate-trust: failed: no thresholds pass"
    )


def test_an_unexpected_error_in_a_job_is_one_line_and_exit_code_1(monkeypatch, capsys):
    """The safety net of ``main``: an error no command reports itself ends in one line, exit 1."""
    from sphere_reg_ros.evaluation import trust_calibration

    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(trust_calibration, "calibrate", broken)
    assert main(["calibrate-trust", "any.csv"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "sphere-reg calibrate-trust: failed: RuntimeError: something broke (-v shows the traceback)\n"
    )


def test_the_exit_codes_are_in_every_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in (
        "register",
        "evaluate",
        "make-benchmark",
        "train",
        "benchmark-train",
        "calibrate-trust",
    ):
        text = " ".join(sub.choices[name].format_help().split())
        expected = REGISTER_EXIT_CODES if name == "register" else EXIT_CODES
        assert " ".join(expected.split()) in text, name
    assert "exit codes" in build_parser().format_help()


@pytest.mark.parametrize("command", ["train", "make-benchmark"])
def test_labels_without_a_ct_are_refused(command, tmp_path, capsys):
    """The example CT brings its own label map: --labels alone is refused, not silently dropped."""
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(b"not read")
    args = [command, "--labels", str(labels), "--out", str(tmp_path / "out.pt")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--labels needs --ct" in err
