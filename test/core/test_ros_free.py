"""sphere_reg_ros.core imports with rclpy, every message package, cv_bridge and tf2 blocked."""

import subprocess
import sys

BLOCKER = r"""
import importlib.abc, pkgutil, sys
BLOCKED = ("rclpy", "rosidl", "rmw", "tf2", "cv_bridge", "launch", "builtin_interfaces")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top.startswith(BLOCKED) or top.endswith(("_msgs", "_srvs", "_interfaces")):
            raise ImportError(f"blocked ROS module {name}")
        return None
sys.meta_path.insert(0, Block())
import sphere_reg_ros.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "sphere_reg_ros.core.")]
for name in names:
    __import__(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "cv_bridge", "tf2_ros"))
print("imported", len(names), "modules; leaked:", leaked)
sys.exit(1 if leaked or not names else 0)
"""


def test_core_imports_without_ros():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaked: []" in result.stdout


def test_core_imports_nothing_above_it():
    """The import direction is one way (docs/ARCHITECTURE.md, Layers): core ← training/evaluation/cli ← ros.

    Checked on the source (every ``import`` statement, lazy ones inside functions included).
    """
    import ast
    from pathlib import Path

    import sphere_reg_ros.core as core

    above = (
        "sphere_reg_ros.training",
        "sphere_reg_ros.evaluation",
        "sphere_reg_ros.ros",
        "sphere_reg_ros.cli",
    )
    offenders = []
    for path in sorted(Path(core.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(above) or (
                    name.startswith("..")
                    and not name.startswith("...")
                    and name[2:].split(".")[0] in ("training", "evaluation", "ros", "cli")
                ):
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offenders, "core imports layers above it: " + "; ".join(offenders)
