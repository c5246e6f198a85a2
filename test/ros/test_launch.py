"""launch/register.launch.py, launch/demo.launch.py and config/register.rviz.

Where ROS 2's ``launch`` and ``launch_ros`` import (a ROS 2 install, a venv with one sourced,
``colcon test``), the launch files are run for real by a ``LaunchService``, against stand-in
executables in a temporary ament prefix: each stand-in records the command line ``launch_ros``
gives it (node name, namespace, remappings, parameter files) and then exits, fails or waits as the
test says. The tests check what the launch files do: arguments and their defaults, the parameters
each node receives (names the node declares, values of the type it declares them with), remappings,
RViz on request, the respawn, and the demo's exit code (0 only when the evaluator exits 0; 1 when
it fails or a peer dies first). In a pip venv without ``launch``/``launch_ros`` these are skipped
with that reason; the RViz config and the launch files' docstrings are checked everywhere.

The launch_pytest test starts the real registration node through register.launch.py; it runs where
launch_pytest imports and this package is installed in an ament prefix (``colcon build``, then
``source install/setup.bash``), and is skipped elsewhere with the reason.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "register.launch.py"
DEMO_LAUNCH_FILE = ROOT / "launch" / "demo.launch.py"
BIPLANE_LAUNCH_FILE = ROOT / "launch" / "demo_biplane.launch.py"
RVIZ_FILE = ROOT / "config" / "register.rviz"
PACKAGE = "sphere_reg_ros"
#: The documented arguments of register.launch.py and their defaults ("" for params_file: the
#: default is the package's config/register.yaml, checked separately).
ARGUMENTS = {
    "params_file": None,
    "namespace": "",
    "image": "image",
    "camera_info": "camera_info",
    "use_sim_time": "false",
    "launch_rviz": "false",
    "respawn": "false",
    "views": "",
    "view_pair_tolerance_s": "",
    "unpaired": "",
    "lifecycle": "auto",
}
DEMO_ARGUMENTS = {
    "frames": "24",
    "rate_hz": "0.2",
    "resolution": "128",
    "degradation": "mild",
    "ct_path": "",
    "model_path": "none",
    "out": "demo_output",
    "timeout_s": "600.0",
    "min_frames": "20",
    "launch_rviz": "false",
}
BIPLANE_ARGUMENTS = {**DEMO_ARGUMENTS, "view_angle_deg": "90.0"}

# `import launch` alone is no test: in the repository root, the launch/ folder of this package
# imports as an (empty) namespace package. launch_ros needs the real launch.
try:
    import launch_ros.actions  # noqa: F401  (a ROS 2 install)
    from launch.actions import (
        DeclareLaunchArgument,
        EmitEvent,
        IncludeLaunchDescription,
        TimerAction,
    )
    from launch.events import Shutdown
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchContext, LaunchDescription, LaunchService

    HAVE_LAUNCH = True
except ImportError:
    HAVE_LAUNCH = False

needs_launch = pytest.mark.skipif(
    not HAVE_LAUNCH, reason="ROS 2 launch/launch_ros not installed (needs a ROS 2 install)"
)

try:
    import launch_pytest  # a ROS 2 install; registers the `launch` marker
except ImportError:
    launch_pytest = None
    LAUNCH_PYTEST_SKIP = "launch_pytest not installed (needs a ROS 2 install)"
else:
    # launch_pytest 3.7.1 reads the `_pytestfixturefunction` attribute of a fixture, which pytest
    # >= 8.4 no longer has: its tests then fail at collection (ros2/launch#979).
    LAUNCH_PYTEST_SKIP = (
        None
        if hasattr(pytest.fixture(lambda: None), "_pytestfixturefunction")
        else f"launch_pytest does not work with pytest {pytest.__version__} (ros2/launch#979; "
        "use pytest < 8.4, as requirements.txt pins)"
    )


def _module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(), filename=str(path))) or ""


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- everywhere ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, arguments",
    [
        (LAUNCH_FILE, ARGUMENTS),
        (DEMO_LAUNCH_FILE, DEMO_ARGUMENTS),
        (BIPLANE_LAUNCH_FILE, BIPLANE_ARGUMENTS),
    ],
)
def test_every_launch_argument_is_documented_in_the_docstring(path, arguments):
    """``ros2 launch --show-args`` lists them; the docstring says what each one does (the behaviour
    tests below check that the launch file declares exactly these)."""
    doc = _module_docstring(path)
    assert doc.startswith(("Launch", "The one-command demo"))
    for name in arguments:
        assert f"``{name}``" in doc, f"{path.name}: argument {name} is not documented"
    if path == LAUNCH_FILE:
        assert "respawn:=true" in (ROOT / "README.md").read_text()


def test_rviz_config_shows_tf_and_the_overlay():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}
    assert "rviz_default_plugins/TF" in displays
    image = displays["rviz_default_plugins/Image"]
    assert image["Topic"]["Value"] == "/registration_node/overlay"
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "carm"


# --- where launch/launch_ros import: the launch files run against stand-in executables ---------

STAND_IN = """#!/bin/sh
# stand-in for {name}: record the command line (one argument a line), then {then}
mkdir -p "$SPHERE_REG_LAUNCH_RECORD/{name}"
for a in "$@"; do printf '%s\\n' "$a"; done > "$SPHERE_REG_LAUNCH_RECORD/{name}/$$.tmp"
mv "$SPHERE_REG_LAUNCH_RECORD/{name}/$$.tmp" "$SPHERE_REG_LAUNCH_RECORD/{name}/$$.args"
{then}
"""
RUN = "exec sleep 120"  # a node that keeps running until launch stops it (SIGINT)


class Prefix:
    """A temporary ament prefix with this package's share/config and stand-in executables."""

    def __init__(self, root: Path, monkeypatch):
        self.root = root / "prefix"
        self.record = root / "record"
        self.record.mkdir()
        index = self.root / "share" / "ament_index" / "resource_index" / "packages"
        index.mkdir(parents=True)
        for package in (PACKAGE, "rviz2"):
            (index / package).write_text("")
        shutil.copytree(ROOT / "config", self.root / "share" / PACKAGE / "config")
        monkeypatch.setenv(
            "AMENT_PREFIX_PATH",
            os.pathsep.join(p for p in (str(self.root), os.environ.get("AMENT_PREFIX_PATH")) if p),
        )
        monkeypatch.setenv("SPHERE_REG_LAUNCH_RECORD", str(self.record))

    def stand_in(self, name: str, then: str = "exit 0", package: str = PACKAGE) -> None:
        path = self.root / "lib" / package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STAND_IN.format(name=name, then=then))
        path.chmod(0o755)

    def starts(self, name: str) -> list[dict]:
        """Each start of ``name``: its ``-r`` rules, parameters (files merged in order, the
        node's section or ``/**``), node name and namespace, and the arguments before
        ``--ros-args``."""
        runs = []
        for path in sorted((self.record / name).glob("*.args"), key=os.path.getmtime):
            args = path.read_text().splitlines()
            cut = args.index("--ros-args") if "--ros-args" in args else len(args)
            run = {"arguments": args[:cut], "remaps": {}, "parameters": {}, "files": []}
            ros = iter(args[cut + 1 :])
            for flag in ros:
                value = next(ros)
                if flag == "-r":
                    src, dst = value.split(":=", 1)
                    run["remaps"][src] = dst
                elif flag == "--params-file":
                    run["files"].append(value)
                    for section in yaml.safe_load(Path(value).read_text()).values():
                        run["parameters"].update(section["ros__parameters"])
                else:
                    raise AssertionError(f"unexpected {flag} {value} in {args}")
            run["name"] = run["remaps"].pop("__node", None)
            run["namespace"] = run["remaps"].pop("__ns", "/")
            runs.append(run)
        return runs


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    return Prefix(tmp_path, monkeypatch)


def run_launch(path: Path, arguments: dict[str, str], stop_after: float | None = None) -> int:
    """``ros2 launch``'s exit code for ``path`` with ``arguments``; ``stop_after`` seconds: shut
    the launch down then (else it ends when its processes have)."""
    entities = [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(path)), launch_arguments=arguments.items()
        )
    ]
    if stop_after is not None:
        entities.append(
            TimerAction(period=stop_after, actions=[EmitEvent(event=Shutdown(reason="test"))])
        )
    service = LaunchService(argv=[], noninteractive=True)
    service.include_launch_description(LaunchDescription(entities))
    return service.run()


def _declared(path: Path) -> dict:
    description = _load(path).generate_launch_description()
    return {
        a.name: a
        for a in description.describe_sub_entities()
        if isinstance(a, DeclareLaunchArgument)
    }


def _check_types(parameters: dict, specs: dict, node: str) -> None:
    """Each parameter is one the node declares, with a value of the type it declares (ROS refuses
    an integer for a double parameter and the reverse)."""
    for name, value in parameters.items():
        if name == "use_sim_time":
            assert value is True or value is False, (node, name, value)
            continue
        assert name in specs, f"{node} declares no parameter {name!r}"
        want = type(specs[name])
        assert type(value) is want or (want is list and isinstance(value, list)), (
            f"{node}.{name} = {value!r} ({type(value).__name__}), declared {want.__name__}"
        )


@needs_launch
@pytest.mark.parametrize(
    "path, arguments",
    [
        (LAUNCH_FILE, ARGUMENTS),
        (DEMO_LAUNCH_FILE, DEMO_ARGUMENTS),
        (BIPLANE_LAUNCH_FILE, BIPLANE_ARGUMENTS),
    ],
)
def test_the_launch_files_declare_the_documented_arguments_and_defaults(path, arguments, prefix):
    declared = _declared(path)
    assert set(declared) == set(arguments)
    context = LaunchContext()
    for name, action in declared.items():
        assert action.description.strip(), f"{name} has no description"
        assert action.default_value is not None, f"{name} has no default"
        action.execute(context)  # sets the default (and checks it against the choices)
        if arguments[name] is not None:
            assert context.launch_configurations[name] == arguments[name], name
    if path == LAUNCH_FILE:
        params_file = Path(context.launch_configurations["params_file"])
        assert params_file == prefix.root / "share" / PACKAGE / "config" / "register.yaml"
    else:
        assert declared["degradation"].choices == ["none", "mild", "benchmark"]


@needs_launch
def test_register_launch_starts_the_node_with_the_package_parameters(prefix):
    from sphere_reg_ros.ros.params import SPECS

    prefix.stand_in("registration_node")
    assert run_launch(LAUNCH_FILE, {}) == 0
    (node,) = prefix.starts("registration_node")
    assert (node["name"], node["namespace"]) == ("registration_node", "/")
    assert node["remaps"] == {"image": "image", "camera_info": "camera_info"}
    # the package's register.yaml first, then use_sim_time
    assert node["files"][0] == str(prefix.root / "share" / PACKAGE / "config" / "register.yaml")
    shipped = yaml.safe_load((ROOT / "config" / "register.yaml").read_text())
    assert node["parameters"] == {**shipped["/**"]["ros__parameters"], "use_sim_time": False}
    _check_types(node["parameters"], {s.name: s.default for s in SPECS.values()}, "node")
    assert not (prefix.record / "rviz2").exists(), "RViz started without launch_rviz:=true"


@needs_launch
def test_register_launch_arguments_reach_the_node_and_rviz(prefix, tmp_path):
    prefix.stand_in("registration_node")
    prefix.stand_in("rviz2", package="rviz2")
    params = tmp_path / "mine.yaml"
    params.write_text("/**:\n  ros__parameters:\n    resolution: 32\n")
    arguments = {
        "params_file": str(params),
        "namespace": "theatre_2",
        "image": "/carm/image",
        "camera_info": "/carm/camera_info",
        "use_sim_time": "true",
        "launch_rviz": "true",
    }
    assert run_launch(LAUNCH_FILE, arguments) == 0
    (node,) = prefix.starts("registration_node")
    assert (node["name"], node["namespace"]) == ("registration_node", "/theatre_2")
    assert node["remaps"] == {"image": "/carm/image", "camera_info": "/carm/camera_info"}
    assert node["files"][0] == str(params)
    assert node["parameters"] == {"resolution": 32, "use_sim_time": True}
    (rviz,) = prefix.starts("rviz2")
    config = prefix.root / "share" / PACKAGE / "config" / "register.rviz"
    assert rviz["arguments"] == ["-d", str(config)]
    assert rviz["parameters"] == {"use_sim_time": True}


@needs_launch
def test_register_launch_passes_the_view_arguments_given_with_the_node_types(prefix):
    """``views`` etc. reach the node only when given (else the params_file's values hold), typed
    as the node declares them (a list of strings, a double)."""
    from sphere_reg_ros.ros.params import SPECS

    prefix.stand_in("registration_node")
    arguments = {"views": "[view_a, view_b]", "view_pair_tolerance_s": "0.02", "unpaired": "mono"}
    assert run_launch(LAUNCH_FILE, arguments) == 0
    (node,) = prefix.starts("registration_node")
    shipped = yaml.safe_load((ROOT / "config" / "register.yaml").read_text())
    assert node["parameters"] == {
        **shipped["/**"]["ros__parameters"],
        "use_sim_time": False,
        "views": ["view_a", "view_b"],
        "view_pair_tolerance_s": 0.02,
        "unpaired": "mono",
    }
    _check_types(node["parameters"], {s.name: s.default for s in SPECS.values()}, "node")


@needs_launch
def test_lifecycle_manual_starts_the_node_without_autostart(prefix):
    """``lifecycle:=manual`` starts the one node with ``autostart`` false (a lifecycle manager
    configures and activates it). ``lifecycle:=launch`` needs the real node, which answers the
    launch file's lifecycle transitions (a stand-in does not)."""
    from sphere_reg_ros.ros.params import SPECS

    prefix.stand_in("registration_node", RUN)
    assert run_launch(LAUNCH_FILE, {"lifecycle": "manual"}, stop_after=3.0) == 0
    (node,) = prefix.starts("registration_node")
    assert (node["name"], node["namespace"]) == ("registration_node", "/")
    assert node["parameters"]["autostart"] is False
    _check_types(node["parameters"], {s.name: s.default for s in SPECS.values()}, "node")


@needs_launch
@pytest.mark.parametrize("respawn", ["false", "true"])
def test_respawn_restarts_the_node_after_its_delay(prefix, respawn):
    """The node exits at once each time: without respawn the launch ends after one start; with
    ``respawn:=true`` it is started again RESPAWN_DELAY_S later, no sooner (no tight loop)."""
    delay = _load(LAUNCH_FILE).RESPAWN_DELAY_S
    assert 0 < delay <= 10
    assert f"RESPAWN_DELAY_S ({delay:g})" in _module_docstring(LAUNCH_FILE)
    prefix.stand_in("registration_node")
    window = 2.25 * delay  # starts at about 0, delay, 2 * delay
    began = time.monotonic()
    rc = run_launch(
        LAUNCH_FILE, {"respawn": respawn}, stop_after=window if respawn == "true" else None
    )
    elapsed = time.monotonic() - began
    assert rc == 0
    starts = len(prefix.starts("registration_node"))
    if respawn == "true":
        assert 2 <= starts <= 3, (starts, elapsed)
    else:
        assert starts == 1 and elapsed < delay + 10


def _demo_prefix(prefix, simulator=RUN, node=RUN, evaluator="sleep 1; exit 0"):
    prefix.stand_in("carm_simulator", simulator)
    prefix.stand_in("registration_node", node)
    prefix.stand_in("demo_evaluator", evaluator)


@needs_launch
def test_demo_launch_runs_the_three_demo_processes_and_ends_with_the_evaluator(prefix):
    """Simulator, registration node and evaluator get parameters each declares, with the demo's
    frame names; the launch ends with exit code 0 when the evaluator exits 0, and stops the
    other two (they would run forever)."""
    from sphere_reg_ros.ros import carm_simulator, demo
    from sphere_reg_ros.ros.params import SPECS

    _demo_prefix(prefix)
    began = time.monotonic()
    assert run_launch(DEMO_LAUNCH_FILE, {"frames": "3", "degradation": "none"}) == 0
    assert time.monotonic() - began < 60, "the launch did not stop the simulator and the node"
    (sim,) = prefix.starts("carm_simulator")
    assert sim["parameters"] == {
        "ct_path": "",
        "rate_hz": 0.2,
        "resolution": 128,
        "degradation": "none",
        "frames": 0,
        "wait_for_subscribers": 1,
        "frame_id": demo.SIM_FRAME,
        "ct_frame": demo.CT_FRAME,
        "truth_frame": demo.TRUTH_FRAME,
    }
    _check_types(sim["parameters"], {s.name: s.default for s in carm_simulator.PARAMS}, "sim")
    (node,) = prefix.starts("registration_node")
    shipped = yaml.safe_load((ROOT / "config" / "register.yaml").read_text())
    assert node["files"][0] == str(prefix.root / "share" / PACKAGE / "config" / "register.yaml")
    assert node["parameters"] == {
        **shipped["/**"]["ros__parameters"],
        "ct_path": "",
        "model_path": "none",
        "tracking": True,
        "default_carm_frame": demo.SIM_FRAME,
        "ct_frame": demo.CT_FRAME,
        "max_image_age_s": 10.0,
        "image_domain": "line_integral",
    }
    _check_types(node["parameters"], {s.name: s.default for s in SPECS.values()}, "node")
    (evaluator,) = prefix.starts("demo_evaluator")
    assert evaluator["parameters"] == {
        "frames": 3,
        "timeout_s": 600.0,
        "min_frames": 20,
        "out": "demo_output",
        "ct_path": "",
    }
    assert not (prefix.record / "rviz2").exists()


@needs_launch
def test_biplane_demo_launch_gives_the_three_processes_the_two_views(prefix):
    """demo_biplane.launch.py: the demo of demo.launch.py with views [view_a, view_b] on the
    simulator (and view_angle_deg), the node (the first view's frame) and the evaluator."""
    from sphere_reg_ros.ros import carm_simulator, demo
    from sphere_reg_ros.ros.params import SPECS

    _demo_prefix(prefix)
    assert run_launch(BIPLANE_LAUNCH_FILE, {"frames": "3", "view_angle_deg": "60"}) == 0
    views = ["view_a", "view_b"]
    assert views == carm_simulator.view_names(2)
    (sim,) = prefix.starts("carm_simulator")
    assert sim["parameters"]["views"] == views and sim["parameters"]["view_angle_deg"] == 60.0
    assert sim["parameters"]["frame_id"] == demo.SIM_FRAME
    _check_types(sim["parameters"], {s.name: s.default for s in carm_simulator.PARAMS}, "sim")
    (node,) = prefix.starts("registration_node")
    assert node["parameters"]["views"] == views
    assert node["parameters"]["default_carm_frame"] == demo.demo_frames(views)[0]
    _check_types(node["parameters"], {s.name: s.default for s in SPECS.values()}, "node")
    (evaluator,) = prefix.starts("demo_evaluator")
    assert evaluator["parameters"]["views"] == views and evaluator["parameters"]["frames"] == 3


@needs_launch
@pytest.mark.parametrize(
    "who", ["evaluator fails", "simulator dies", "registration node dies"], ids=str
)
def test_demo_launch_fails_when_the_evaluator_fails_or_a_peer_dies_first(prefix, who):
    """Exit code 1 (``ros2 launch``'s for an error) and at once, not after ``timeout_s``. (The
    failing process runs a second first, so that the others have recorded their start.)"""
    if who == "evaluator fails":
        _demo_prefix(prefix, evaluator="sleep 1; exit 3")
    elif who == "simulator dies":
        _demo_prefix(prefix, simulator="sleep 1; exit 1", evaluator=RUN)
    else:
        _demo_prefix(prefix, node="sleep 1; exit 1", evaluator=RUN)
    began = time.monotonic()
    assert run_launch(DEMO_LAUNCH_FILE, {}) == 1
    assert time.monotonic() - began < 60
    for name in ("carm_simulator", "registration_node", "demo_evaluator"):
        assert len(prefix.starts(name)) == 1, name


def test_the_launched_executables_are_console_scripts_of_the_package():
    """The executables the launch files start (the stand-ins above carry their names) are
    console scripts of this package that load."""
    from importlib.metadata import distribution

    scripts = {
        e.name: e for e in distribution(PACKAGE).entry_points if e.group == "console_scripts"
    }
    for exe in ("registration_node", "carm_simulator", "demo_evaluator"):
        assert exe in scripts, f"setup.py installs no console script {exe}"
        assert callable(scripts[exe].load()), exe


# --- where launch_pytest imports and the package is installed: the real node ------------------


def _installed_executable() -> str | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        path = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / "registration_node"
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH at all
        return None
    return str(path) if path.is_file() else None


if LAUNCH_PYTEST_SKIP is not None:

    @pytest.mark.skip(reason=LAUNCH_PYTEST_SKIP)
    def test_launch_starts_the_node_with_namespace_and_remaps():
        """Runs in a ROS 2 install: see the launch_pytest version below."""

else:  # pragma: no cover - needs a ROS 2 install
    NAMESPACE = "launch_test"

    @launch_pytest.fixture
    def launch_description():
        return LaunchDescription(
            [
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                    launch_arguments={
                        "namespace": NAMESPACE,
                        "image": "/carm/image",
                        "camera_info": "/carm/camera_info",
                        "launch_rviz": "false",
                        "params_file": str(ROOT / "config" / "register.yaml"),
                    }.items(),
                ),
                launch_pytest.actions.ReadyToTest(),
            ]
        )

    @pytest.mark.skipif(
        _installed_executable() is None,
        reason=f"{PACKAGE} is not installed in an ament prefix (colcon build, then source "
        "install/setup.bash)",
    )
    @pytest.mark.launch(fixture=launch_description)
    def test_launch_starts_the_node_with_namespace_and_remaps():
        import rclpy
        from rclpy.node import Node

        rclpy.init()
        node = Node("launch_test_probe")
        try:
            want = {f"/{NAMESPACE}/registration_node/pose", "/carm/image", "/carm/camera_info"}
            deadline = time.monotonic() + 240.0  # the embedded CT is loaded and resampled first
            seen: set[str] = set()
            while time.monotonic() < deadline and not want <= seen:
                rclpy.spin_once(node, timeout_sec=0.5)
                seen = {name for name, _ in node.get_topic_names_and_types()}
            assert want <= seen, f"missing topics {want - seen}; seen {sorted(seen)}"
            subscribers = node.get_subscriptions_info_by_topic("/carm/image")
            assert any(
                i.node_name == "registration_node" and i.node_namespace == f"/{NAMESPACE}"
                for i in subscribers
            )
        finally:
            node.destroy_node()
            rclpy.shutdown()
