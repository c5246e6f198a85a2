"""Parameters of the registration node: one table → declarations, validation, settings, YAML.

Every parameter is declared from :data:`PARAMS` with a description, its range (numeric ones,
``FloatingPointRange``/``IntegerRange``, enforced by rclpy) and whether it is read-only.
``config/register.yaml`` mirrors the table (a test checks names, types and defaults).
:func:`validate` adds the checks a range cannot express (choices, frame names, files, the
initial pose, the DICOM geometry file, CUDA) and is what the node's on-set-parameters callback runs, so a bad value is
rejected with the reason and the old value stays.

Units are in the names: times end in ``_s``, lengths in ``_mm`` (``initial_pose_mm`` too, whose
translation is in mm like every other length here; :data:`RENAMED` lists old names that a node
refuses at start-up instead of ignoring them).

Groups (``kind``):

* ``registrar``: changing one rebuilds the registrar (CT, model, solver) in a background thread
  and swaps it in atomically when it is ready; until then the old one serves.
* ``runtime``: read for every frame (frames, gates, tracking, intrinsics, image domain).
* ``startup``: read-only; fixed when the node starts (QoS, diagnostics period).

The same mechanism serves the ``carm_simulator`` node: its own table of :class:`ParamSpec`
(all ``startup``), declared with :func:`descriptor` and checked with :func:`check_values` and
:func:`check_frame_id`.

The table itself is :mod:`.param_table`; the file probes are :mod:`.file_probes` (both
re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..core.trust import TrustConfig
from .file_probes import dicom_geometry, probe_model_file, probe_volume_file
from .param_table import (
    _GATES,
    PARAMS,
    REGISTRAR_KEYS,
    RENAMED,
    SPECS,
    ParameterError,
    ParamSpec,
)

__all__ = [
    "ParamSpec",
    "PARAMS",
    "SPECS",
    "Settings",
    "ParameterError",
    "descriptor",
    "check_values",
    "check_frame_id",
    "validate",
    "REGISTRAR_KEYS",
    "RENAMED",
    "yaml_defaults",
    "probe_volume_file",
    "probe_model_file",
    "freeze",
    "check_renamed",
    "check_views",
    "declared_default",
    "parameter_values",
]


def parse_roi(value: str) -> str | tuple[float, float, float]:
    """The ``roi`` parameter as ``RegistrarConfig.roi``: 'bone', 'center' or three numbers (mm).
    Raises ParameterError."""
    text = str(value).strip()
    if text in ("bone", "center"):
        return text
    try:
        point = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ParameterError(
            f"roi {value!r} is not 'bone', 'center' or three numbers 'x, y, z' (mm)"
        )
    return point


def trust_config(settings) -> TrustConfig:
    """The quality gates of the node's parameters (``settings``: :class:`Settings`)."""
    return replace(
        _GATES,
        max_normalised_cost=float(settings.max_normalised_cost),
        max_position_std_mm=float(settings.max_position_std_mm),
        max_masked_fraction=float(settings.max_masked_fraction),
        max_inconsistency_mm=float(settings.max_inconsistency_mm),
    )


def check_renamed(names) -> None:
    """Raise ParameterError when ``names`` (parameters given to the node) hold a renamed one."""
    old = sorted(set(names) & set(RENAMED))
    if old:
        raise ParameterError("; ".join(f"parameter {n} was renamed {RENAMED[n]}" for n in old))


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """``ParameterDescriptor`` with description, range and read-only flag of ``spec``."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    d = ParameterDescriptor(description=text, read_only=spec.kind == "startup")
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)
            ]
    if spec.choices:
        d.additional_constraints = f"one of: {', '.join(spec.choices)}"
    return d


@dataclass(frozen=True)
class Settings:
    """A validated snapshot of every parameter (attribute per parameter name)."""

    values: dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def registrar_key(self) -> tuple:
        """What the registrar depends on: a change means a rebuild."""
        return tuple((k, freeze(self.values[k])) for k in REGISTRAR_KEYS)

    def replace(self, **changes) -> "Settings":
        return Settings({**self.values, **changes})


def freeze(v):
    """Hashable, comparable form of a parameter value (sequences become tuples)."""
    return v if isinstance(v, (str, bytes, int, float, bool)) or v is None else tuple(v)


def check_frame_id(name: str, value: str) -> None:
    """Raise ParameterError unless ``value`` (the parameter ``name``) is a usable tf2 frame id:
    non-empty, no leading '/', no white space."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name} must be a non-empty frame id")
    if value.startswith("/") or any(c.isspace() for c in value):
        raise ParameterError(f"{name} {value!r}: frame ids have no leading '/' and no spaces (tf2)")


def _numbers(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; ParameterError naming ``name`` when it holds no numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} {value!r} is not a list of numbers") from exc


def check_values(values: dict, specs: tuple[ParamSpec, ...]) -> None:
    """Check ``values`` (``{name: value}``) against a parameter table: every parameter present,
    each value one of its ``choices`` and inside its ``range`` (finite). Used for the
    registration node's :data:`PARAMS` and for the simulator's table.

    Raises:
        ParameterError: the first problem, naming the parameter.
    """
    for spec in specs:
        if spec.name not in values:
            raise ParameterError(f"parameter {spec.name} missing")
        v = values[spec.name]
        if spec.choices and v not in spec.choices:
            raise ParameterError(f"{spec.name} {v!r} is not one of {', '.join(spec.choices)}")
        if spec.range is not None and not isinstance(v, bool):
            lo, hi = spec.range
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                raise ParameterError(f"{spec.name} {v!r} is outside [{lo:g}, {hi:g}]")


def validate(
    values: dict, changed: set[str] | None = None, cuda_available: bool | None = None, ct=None
) -> Settings:
    """Check a full set of parameter values (``changed``: only these need file checks).

    ``ct``: the CT a changed ``model_path`` will serve with (a Volume or its fingerprint), when
    known without loading it (the node passes the one in service if ``ct_path`` is unchanged);
    the checkpoint's CT fingerprint is then checked too.

    Raises:
        ParameterError: the reason, naming the parameter.
    """
    changed = set(values) if changed is None else changed
    check_values(values, PARAMS)
    check_frame_id("ct_frame", values["ct_frame"])
    check_frame_id("default_carm_frame", values["default_carm_frame"])
    if values["ct_frame"] == values["default_carm_frame"]:
        raise ParameterError("ct_frame and default_carm_frame must differ")
    scales = _numbers(values["lm_scales"], "lm_scales")
    if scales.ndim != 1 or scales.size == 0 or not np.all((scales > 0) & (scales <= 1)):
        raise ParameterError("lm_scales must be one or more fractions in (0, 1]")
    parse_roi(values["roi"])
    for name in ("polish", "process_stream", "autostart"):
        if not isinstance(values[name], bool):
            raise ParameterError(f"{name} must be true or false, got {values[name]!r}")
    prior = (values["prior_parent_frame"], values["prior_child_frame"])
    for name, value in zip(("prior_parent_frame", "prior_child_frame"), prior):
        if not isinstance(value, str):
            raise ParameterError(f"{name} must be a frame id (a string), got {value!r}")
    if any(prior):
        check_frame_id("prior_parent_frame", prior[0])
        check_frame_id("prior_child_frame", prior[1])
        if prior[0] == prior[1]:
            raise ParameterError("prior_parent_frame and prior_child_frame must differ")
    check_views(values)
    pose = _numbers(values["initial_pose_mm"], "initial_pose_mm")
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ParameterError(
            "initial_pose_mm must be 7 finite numbers [x, y, z (mm), qx, qy, qz, qw]"
        )
    if np.linalg.norm(pose[3:]) < 1e-6:
        raise ParameterError("initial_pose_mm has a zero quaternion")
    if "ct_path" in changed and values["ct_path"]:
        probe_volume_file(values["ct_path"])
    if "model_path" in changed and values["model_path"] and values["model_path"] != "none":
        probe_model_file(values["model_path"], ct=ct)
    if "dicom_geometry_path" in changed and values["dicom_geometry_path"]:
        dicom_geometry(values["dicom_geometry_path"])
    if values["device"] == "cuda" and ("device" in changed):
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            raise ParameterError("device 'cuda' requested but no CUDA device is available")
    return Settings(dict(values))


def _view_name_ok(ns: str) -> bool:
    """A relative ROS name: tokens of letters, digits and '_' separated by single '/',
    not starting with a digit."""
    tokens = ns.split("/")
    return (
        all(
            t and (t[0].isalpha() or t[0] == "_") and all(c.isalnum() or c == "_" for c in t)
            for t in tokens
        )
        and ns.isascii()
    )


def _strings(value, name: str) -> list[str]:
    """``value`` as a list of strings (a string array parameter), else ParameterError naming it."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ParameterError(f"{name} must be a list of strings, got {value!r}")
    return list(value)


def check_views(values: dict) -> None:
    """The several-view parameters (``views``, ``view_frames``, ``view_offsets_mm``): names,
    counts, finite offsets with non-zero quaternions. Raises ParameterError."""
    views = _strings(values["views"], "views")
    for ns in views:
        if not _view_name_ok(ns):
            raise ParameterError(
                f"views: {ns!r} is not a relative ROS namespace (letters, digits, '_', '/'; "
                "no leading '/')"
            )
    if len(set(views)) != len(views):
        raise ParameterError(f"views {views} name a namespace twice")
    frames = _strings(values["view_frames"], "view_frames")
    if frames and len(frames) != len(views):
        raise ParameterError(
            f"view_frames has {len(frames)} frame ids for {len(views)} views: give one per view, "
            "or [] for the images' frame ids"
        )
    for k, frame in enumerate(frames):
        check_frame_id(f"view_frames[{k}]", frame)
    offsets = _numbers(values["view_offsets_mm"], "view_offsets_mm")
    if offsets.size == 0:
        return
    if not views:
        raise ParameterError(
            "view_offsets_mm is set but views is empty (one view needs no offsets)"
        )
    want = 7 * (len(views) - 1)
    if offsets.shape != (want,) or not np.all(np.isfinite(offsets)):
        raise ParameterError(
            f"view_offsets_mm must be {want} finite numbers for {len(views)} views "
            "(x, y, z (mm), qx, qy, qz, qw per view after the first), got "
            f"{offsets.size}"
        )
    for k, q in enumerate(offsets.reshape(-1, 7)[:, 3:], start=1):
        if np.linalg.norm(q) < 1e-6:
            raise ParameterError(
                f"view_offsets_mm: the quaternion of view {k} ({views[k]}) is zero"
            )


def declared_default(spec: ParamSpec):
    """What the node declares ``spec`` with: its default, or for a list parameter with an empty
    default its type (``rclpy.Parameter.Type``; the value then stays unset until given)."""
    if spec.item is None or list(spec.default):
        return spec.default
    from rclpy.parameter import Parameter

    return {"string": Parameter.Type.STRING_ARRAY, "double": Parameter.Type.DOUBLE_ARRAY}[spec.item]


def parameter_values(node) -> dict:
    """``{name: value}`` of every parameter of ``node``; an unset one (an empty list parameter
    given no value) is its default."""
    from rclpy.exceptions import ParameterUninitializedException

    values = {}
    for spec in PARAMS:
        try:
            values[spec.name] = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            values[spec.name] = spec.default
    return values


def yaml_defaults() -> dict:
    """``{name: default}`` of every parameter (what config/register.yaml mirrors)."""
    return {p.name: p.default for p in PARAMS}
