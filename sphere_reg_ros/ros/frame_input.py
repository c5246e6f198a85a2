"""From an incoming ``Image`` (+ ``CameraInfo``) to what the registrar takes, or a reason to refuse.

:func:`prepare_frame` runs the node's input checks in order and returns the line-integral image
``(H, W)`` float32 and its :class:`~sphere_reg_ros.core.carm.CarmGeometry`, or raises
:class:`FrameRejected` whose ``reason`` is a key of :data:`REASONS` (the diagnostic ``status``).
The node first checks the stamp (:func:`check_stamp`) and pairs the image with a CameraInfo
(:func:`match_camera_info`), then calls :func:`prepare_frame` with that CameraInfo:

=========================  =====  ==============================================================
reason                     level  when
=========================  =====  ==============================================================
``stale``                  WARN   stamp older than ``max_image_age_s`` on arrival (node clock;
                                  an unstamped image, stamp 0, is stale too)
``future_stamp``           ERROR  stamp more than ``max_future_stamp_s`` ahead of the node clock
                                  on arrival (unsynchronised clocks, or ``use_sim_time`` without
                                  ``/clock``); the message says how far ahead
``unmatched_camera_info``  WARN   ``use_camera_info`` and CameraInfo messages have arrived, but
                                  none pairs with the image (rule below)
``unsupported_encoding``   ERROR  encoding not mono8, mono16, 16UC1, 32FC1
``too_large``              ERROR  more than ``max_image_pixels`` pixels (height × width fields;
                                  checked before decoding)
``zero_size``              ERROR  height or width 0
``bad_step``               ERROR  ``step`` smaller than ``width`` × bytes per pixel
``bad_data_length``        ERROR  ``len(data) != step × height``
``non_finite``             WARN   NaN or inf pixels (32FC1)
``bad_camera_info``        ERROR  CameraInfo without usable intrinsics: a K with a negative
                                  focal length or one positive and one non-positive, an all-zero
                                  K without a usable P, skew, a partial ROI
``no_intrinsics``          ERROR  no CameraInfo yet and no fx/fy/width/height parameters
``size_mismatch``          ERROR  image size differs from the CameraInfo (or parameters) size
``bad_intensity``          WARN   ``image_domain: intensity`` with no positive pixel
=========================  =====  ==============================================================

With several views (``views``) each view's frame is checked so, the message naming the view; a
set is also refused for ``view_offset_missing`` (ERROR: a view's relative pose is neither in
``view_offsets_mm`` nor on TF; :mod:`.view_offsets`).

Pairing an image with its CameraInfo (:func:`match_camera_info`; ``Δ`` = image stamp − CameraInfo
stamp, over the last :data:`CAMERA_INFO_BUFFER` CameraInfo messages received):

1. the CameraInfo with the smallest ``|Δ|``, if ``|Δ| ≤ camera_info_tolerance_s``;
2. else the newest one stamped at or before the image, if ``Δ ≤ camera_info_max_age_s``
   (``0`` turns this fall-back off: strict pairing);
3. else ``unmatched_camera_info``. A CameraInfo stamped after the image by more than the
   tolerance is never used for it, nor one older than ``camera_info_max_age_s`` (an unstamped
   CameraInfo, stamp 0, pairs only with unstamped images).

Publish CameraInfo with its image's stamp (as ``image_transport``'s camera publishers do) and
rule 1 pairs them exactly. Before any CameraInfo has arrived the ``fx``/``fy``/``cx``/``cy``/
``width``/``height`` parameters are used (or, when ``dicom_geometry_path`` names a DICOM X-ray,
its header's intrinsics); with ``use_camera_info: false`` always.

Intensity domain: ``line_integral`` takes pixel values as they are (−log attenuation line
integrals, bone bright; our simulator and benchmark publish 32FC1 so); ``intensity`` takes raw
detector counts ``I`` (bone dark) and converts them with ``−log(I / I_max)``, ``I_max`` the
``intensity_max`` parameter or, when 0, the image's maximum; counts are clipped to
``≥ 1e-6 · I_max`` first.

Size: a large frame is reduced before it reaches the registrar, which resamples every image to
``resolution`` rows anyway: :func:`reduction_factor` picks the largest integer ``f`` dividing
both sides that leaves at least ``4 × resolution`` rows (none for images that small), and
:func:`reduced_line_integrals` converts and block-means the pixels ``f`` rows at a time in
float32 (the line integrals are formed at full resolution, then averaged, as the registrar's own
block means did), so no full-size float copy exists; the geometry becomes
``geometry.resized(H / f, W / f)`` (same field of view). Peak memory of
:func:`prepare_frame` for a 4096² mono16 frame (32 MiB message, resolution 64 → a 256² image):
2.3 MiB above the message (``OMP_NUM_THREADS=1 python -m sphere_reg_ros.ros.frame_input``,
tracemalloc); the former full-size path (a copy, float64, float32) peaked at 224 MiB, and the
registrar then held a 64 MiB full-size tensor as well.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from ..core.carm import CarmGeometry, CarmGeometryError
from . import conversions as conv
from .diagnostics import ERROR, OK, WARN

__all__ = [
    "ACCEPTED_ENCODINGS",
    "CAMERA_INFO_BUFFER",
    "REASONS",
    "FrameRejected",
    "check_stamp",
    "line_integrals",
    "frame_geometry",
    "match_camera_info",
    "paired_camera_info",
    "prepare_frame",
    "reduced_line_integrals",
    "reduction_factor",
    "stamp_ns",
]

#: Encodings the node registers (conversions can decode more, e.g. bgr8 for the overlay).
ACCEPTED_ENCODINGS = ("mono8", "mono16", "16UC1", "32FC1")

#: How many CameraInfo messages the node keeps to pair images with.
CAMERA_INFO_BUFFER = 10

#: Diagnostic ``status`` value → level, for everything the node reports about a frame or a CT.
REASONS = {
    "ok": OK,
    "waiting": OK,
    "ct_loaded": OK,
    "configured": OK,
    "unconfigured": OK,
    "not_active": WARN,
    "no_frame": WARN,
    "stale": WARN,
    "non_finite": WARN,
    "bad_intensity": WARN,
    "unmatched_camera_info": WARN,
    "model_warning": WARN,
    "future_stamp": ERROR,
    "unsupported_encoding": ERROR,
    "too_large": ERROR,
    "bad_step": ERROR,
    "bad_data_length": ERROR,
    "zero_size": ERROR,
    "size_mismatch": ERROR,
    "no_intrinsics": ERROR,
    "bad_camera_info": ERROR,
    "frame_conflict": ERROR,
    "view_offset_missing": ERROR,
    "registration_failed": ERROR,
    "rejected_cost": ERROR,
    "rejected_covariance": ERROR,
    "rejected_masked": ERROR,
    "rejected_inconsistent": ERROR,
    "rejected": ERROR,
    "ct_load_failed": ERROR,
    "configure_failed": ERROR,
    "internal_error": ERROR,
}


class FrameRejected(ValueError):
    """A frame the node will not register; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def stamp_ns(stamp) -> int:
    """``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def check_stamp(age_s: float, s) -> None:
    """Refuse an image by its age on arrival (``age_s`` = node clock − stamp; negative: ahead).

    ``stale`` when older than ``max_image_age_s``, ``future_stamp`` when more than
    ``max_future_stamp_s`` ahead (either 0 = no limit).
    """
    if s.max_image_age_s > 0 and age_s > s.max_image_age_s:
        raise FrameRejected(
            "stale",
            f"stale image: stamp {age_s:.2f} s old on arrival "
            f"(max_image_age_s {s.max_image_age_s:g})",
        )
    if s.max_future_stamp_s > 0 and -age_s > s.max_future_stamp_s:
        raise FrameRejected(
            "future_stamp",
            f"image stamp {-age_s:.3f} s ahead of the node clock on "
            f"arrival (max_future_stamp_s {s.max_future_stamp_s:g}); are the clocks "
            "synchronised (or use_sim_time without /clock)?",
        )


def paired_camera_info(infos, image_stamp_ns: int, tolerance_s: float) -> CameraInfo | None:
    """The CameraInfo of ``infos`` closest in stamp to the image, if within ``tolerance_s``; a tie
    goes to the one received last (``infos`` in order of arrival)."""
    best, best_dt = None, None
    for info in reversed(tuple(infos)):
        dt = abs(image_stamp_ns - stamp_ns(info.header.stamp))
        if best_dt is None or dt < best_dt:
            best, best_dt = info, dt
    return best if best is not None and best_dt <= tolerance_s * 1e9 else None


def match_camera_info(
    infos, image_stamp_ns: int, tolerance_s: float, max_age_s: float
) -> CameraInfo | None:
    """The CameraInfo for an image stamped ``image_stamp_ns`` (rules in the module docstring).

    ``infos``: the buffered CameraInfo messages in order of arrival. None when there are none
    (the caller then uses the intrinsics parameters).

    Raises:
        FrameRejected: ``unmatched_camera_info``, saying how far off the closest one was.
    """
    infos = tuple(infos)
    if not infos:
        return None
    paired = paired_camera_info(infos, image_stamp_ns, tolerance_s)
    if paired is not None:
        return paired
    older = [i for i in infos if stamp_ns(i.header.stamp) <= image_stamp_ns]
    newest = max(older, key=lambda i: stamp_ns(i.header.stamp), default=None)
    age_s = None if newest is None else (image_stamp_ns - stamp_ns(newest.header.stamp)) * 1e-9
    if age_s is not None and max_age_s > 0 and age_s <= max_age_s:
        return newest
    closest = min(abs(image_stamp_ns - stamp_ns(i.header.stamp)) for i in infos) * 1e-9
    newest_text = (
        "none is stamped at or before it"
        if age_s is None
        else f"the newest at or before it is {age_s:.3f} s older"
    )
    raise FrameRejected(
        "unmatched_camera_info",
        (
            f"no CameraInfo pairs with the image stamped {image_stamp_ns * 1e-9:.3f}: the closest of the "
            f"last {len(infos)} is {closest:.3f} s off (camera_info_tolerance_s {tolerance_s:g}) and "
            f"{newest_text} (camera_info_max_age_s {max_age_s:g})"
        ),
    )


def line_integrals(image: np.ndarray, domain: str, intensity_max: float = 0.0) -> np.ndarray:
    """``(H, W)`` float32 line integrals of a decoded image (see the module docstring)."""
    img = np.asarray(image, dtype=np.float64)
    if domain == "line_integral":
        return img.astype(np.float32)
    if domain != "intensity":
        raise ValueError(f"image_domain must be 'line_integral' or 'intensity', got {domain!r}")
    i_max = float(intensity_max) if intensity_max > 0 else float(img.max())
    if not i_max > 0:
        raise FrameRejected("bad_intensity", "intensity image has no positive pixel (I_max <= 0)")
    return (-np.log(np.clip(img, 1e-6 * i_max, None) / i_max)).astype(np.float32)


#: A reduced frame keeps at least this many times the registration resolution in rows.
KEEP_FACTOR = 4
#: About this many pixels are converted at a time by :func:`reduced_line_integrals`.
_CHUNK_PIXELS = 1 << 18


def reduction_factor(height: int, width: int, resolution: int) -> int:
    """The largest integer ``f`` dividing ``height`` and ``width`` with ``height / f`` at least
    ``KEEP_FACTOR × resolution`` (1: no reduction)."""
    keep = KEEP_FACTOR * max(1, int(resolution))
    for f in range(max(1, int(height) // keep), 1, -1):
        if height % f == 0 and width % f == 0:
            return f
    return 1


def reduced_line_integrals(
    pixels: np.ndarray, domain: str, intensity_max: float = 0.0, factor: int = 1
) -> np.ndarray:
    """Line integrals of ``pixels`` ``(H, W)`` block-meaned by ``factor`` (which divides H and W):
    ``(H / factor, W / factor)`` float32, as :func:`line_integrals` followed by ``factor × factor``
    block means, computed a few rows at a time in float32 (never a full-size float array)."""
    h, w = pixels.shape
    f = int(factor)
    if f < 1 or h % f or w % f:
        raise ValueError(f"factor {factor} does not divide the image size {h}x{w}")
    if domain not in ("line_integral", "intensity"):
        raise ValueError(f"image_domain must be 'line_integral' or 'intensity', got {domain!r}")
    if domain == "intensity":
        i_max = float(intensity_max) if intensity_max > 0 else float(pixels.max())
        if not i_max > 0:
            raise FrameRejected(
                "bad_intensity", "intensity image has no positive pixel (I_max <= 0)"
            )
        floor = np.float32(1e-6 * i_max)
    out = np.empty((h // f, w // f), dtype=np.float32)
    rows = f * max(1, _CHUNK_PIXELS // (f * w))
    for r0 in range(0, h, rows):
        block = np.array(pixels[r0 : r0 + rows], dtype=np.float32)  # a chunk's own float32 copy
        if domain == "intensity":
            np.maximum(block, floor, out=block)
            block /= np.float32(i_max)
            np.log(block, out=block)
            np.negative(block, out=block)
        n = block.shape[0]
        if f == 1:
            out[r0 : r0 + n] = block
        else:
            out[r0 // f : (r0 + n) // f] = block.reshape(n // f, f, w // f, f).mean(
                axis=(1, 3), dtype=np.float32
            )
    return out


def _dicom_fallback(path: str, height: int, width: int) -> tuple[CarmGeometry, str]:
    """The intrinsics of the DICOM header ``dicom_geometry_path`` for a ``height × width`` image
    (the same detector binned by a whole factor is resized) and its name for messages."""
    from .file_probes import dicom_geometry
    from .param_table import ParameterError

    try:
        g = dicom_geometry(path)
    except ParameterError as exc:
        raise FrameRejected("no_intrinsics", str(exc)) from exc
    f = g.height // height if height and width else 0
    if (
        (g.height, g.width) != (height, width)
        and f > 1
        and (height * f, width * f)
        == (
            g.height,
            g.width,
        )
    ):
        g = g.resized(height, width)
    return g, f"the DICOM header {path}"


def frame_geometry(info: CameraInfo | None, s, height: int, width: int) -> CarmGeometry:
    """Geometry of a ``height × width`` image: CameraInfo when used and given, else the DICOM
    header ``dicom_geometry_path`` when set, else the intrinsics parameters.

    ``s``: the node's settings (``use_camera_info``, ``sdd_mm``, ``fx``, ``fy``, ``cx``, ``cy``,
    ``width``, ``height``, ``dicom_geometry_path``).
    """
    if s.use_camera_info and info is not None:
        try:
            g = conv.camera_info_to_geometry(info, s.sdd_mm)
        except conv.CameraInfoConversionError as exc:
            raise FrameRejected("bad_camera_info", str(exc)) from exc
        source = "CameraInfo"
    elif getattr(s, "dicom_geometry_path", ""):
        g, source = _dicom_fallback(s.dicom_geometry_path, height, width)
    else:
        if not (s.fx > 0 and s.fy > 0 and s.width > 0 and s.height > 0):
            raise FrameRejected(
                "no_intrinsics",
                "no camera_info received and the fallback intrinsics "
                "(fx, fy, width, height parameters) are not set",
            )
        cx = s.cx if s.cx >= 0 else (s.width - 1) / 2.0
        cy = s.cy if s.cy >= 0 else (s.height - 1) / 2.0
        K = np.array([[s.fx, 0.0, cx], [0.0, s.fy, cy], [0.0, 0.0, 1.0]])
        try:
            g = CarmGeometry.from_intrinsics(K, int(s.height), int(s.width), sdd=float(s.sdd_mm))
        except CarmGeometryError as exc:
            raise FrameRejected("no_intrinsics", f"fallback intrinsics unusable: {exc}") from exc
        source = "the intrinsics parameters"
    if (g.height, g.width) != (height, width):
        raise FrameRejected(
            "size_mismatch",
            f"image {width}x{height} (WxH) disagrees with {source} {g.width}x{g.height}",
        )
    return g


def prepare_frame(
    msg: Image, info: CameraInfo | None, s, age_s: float
) -> tuple[np.ndarray, CarmGeometry]:
    """Checks + conversion of one frame (``age_s``: its age on arrival; ``info``: the CameraInfo
    paired with it, or None). Raises FrameRejected."""
    check_stamp(age_s, s)
    if msg.encoding not in ACCEPTED_ENCODINGS:
        raise FrameRejected(
            "unsupported_encoding",
            f"unsupported image encoding {msg.encoding!r} "
            f"(accepted: {', '.join(ACCEPTED_ENCODINGS)})",
        )
    limit = int(getattr(s, "max_image_pixels", 0) or 0)
    if limit > 0 and int(msg.height) * int(msg.width) > limit:
        raise FrameRejected(
            "too_large",
            f"image {msg.width}x{msg.height} (WxH) has "
            f"{int(msg.height) * int(msg.width)} pixels, more than max_image_pixels {limit}",
        )
    try:
        pixels = conv.image_to_numpy(
            msg, copy=False
        )  # a view of the message's bytes where possible
    except conv.ImageConversionError as exc:
        raise FrameRejected(
            exc.reason if exc.reason in REASONS else "bad_data_length", str(exc)
        ) from exc
    geometry = frame_geometry(info, s, *pixels.shape)
    f = reduction_factor(*pixels.shape, int(getattr(s, "resolution", 0) or 0))
    image = reduced_line_integrals(pixels, s.image_domain, s.intensity_max, f)
    if f > 1:
        geometry = geometry.resized(*image.shape)
    return image, geometry


def _measure(size: int = 4096, resolution: int = 64) -> None:
    """Print the peak memory (tracemalloc) of :func:`prepare_frame` on a ``size``² mono16 frame."""
    import tracemalloc

    from ..core.carm import CarmGeometry
    from .params import validate, yaml_defaults

    s = validate(
        {
            **yaml_defaults(),
            "resolution": resolution,
            "use_camera_info": False,
            "fx": 4000.0,
            "fy": 4000.0,
            "width": size,
            "height": size,
        },
        changed=set(),
    )
    pixels = np.random.default_rng(0).integers(1, 60000, (size, size), dtype=np.uint16)
    msg = conv.numpy_to_image(pixels, "mono16")
    del pixels
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    image, geometry = prepare_frame(msg, None, s, 0.0)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert isinstance(geometry, CarmGeometry)
    print(
        f"{size}x{size} mono16 ({len(msg.data) / 2**20:.0f} MiB message), resolution {resolution}: "
        f"image {image.shape} {image.dtype}, peak {peak / 2**20:.2f} MiB above the message"
    )


if __name__ == "__main__":
    _measure()
