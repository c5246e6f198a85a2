"""package.xml is well formed and declares every third-party module the package imports."""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Python module -> the package.xml dependency key that provides it ("pip:<name>" for packages
# without a rosdep key, which must then be named in package.xml's pip comment).
MODULE_TO_DEPENDENCY = {
    "rclpy": "rclpy",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "diagnostic_msgs": "diagnostic_msgs",
    "builtin_interfaces": "builtin_interfaces",
    "rcl_interfaces": "rcl_interfaces",
    "lifecycle_msgs": "lifecycle_msgs",
    "tf2_ros": "tf2_ros",
    "tf2_msgs": "tf2_msgs",
    "cv_bridge": "cv_bridge",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "launch_pytest": "launch_pytest",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "nibabel": "python3-nibabel",
    "pydicom": "python3-pydicom",
    "h5py": "python3-h5py",
    "diffdrr": "pip:diffdrr",
    "torchio": "pip:diffdrr",
    "timm": "pip:timm",
    "nrrd": "pip:pynrrd",
    "xvr": "pip:xvreg",  # optional peer baseline (extra "peers"), imported lazily by the evaluation
    "setuptools": "python3-setuptools-or-buildtool",
}


def _package_xml():
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return ET.parse(ROOT / "package.xml", parser=parser).getroot()


def _imported_modules(paths):
    found = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(ROOT))
    return found


def test_package_xml_is_well_formed_format_3():
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    for tag in ("name", "version", "description", "maintainer", "license"):
        assert root.find(tag) is not None and root.find(tag).text.strip(), f"<{tag}> missing"
    assert root.find("name").text == "sphere_reg_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / "sphere_reg_ros").exists()


def test_every_third_party_import_is_declared():
    root = _package_xml()
    declared = {
        el.text.strip()
        for tag in ("depend", "exec_depend", "test_depend", "build_depend")
        for el in root.findall(tag)
    }
    pip_comment = " ".join(c.text for c in root.iter() if c.tag is ET.Comment and "pip" in c.text)
    sources = sorted((ROOT / "sphere_reg_ros").rglob("*.py")) + sorted(
        (ROOT / "launch").glob("*.py")
    )
    imports = _imported_modules(sources)
    own = {"sphere_reg_ros"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    missing = []
    for module, where in sorted(imports.items()):
        if module in stdlib or module in own or module == "setuptools":
            continue
        dep = MODULE_TO_DEPENDENCY.get(module)
        if dep is None:
            missing.append(f"{module} (imported in {where}) has no known dependency key")
        elif dep.startswith("pip:"):
            if dep[4:] not in pip_comment:
                missing.append(f"{module} (imported in {where}) needs {dep[4:]} in the pip comment")
        elif dep not in declared:
            missing.append(f"{module} (imported in {where}) needs <exec_depend>{dep}</exec_depend>")
    assert not missing, "\n".join(missing)


def test_every_declared_message_package_is_imported():
    """The converse for ROS interface packages (``*_msgs``, ``*_srvs``, ``*_interfaces``): a
    declared one that no module imports is a dependency nobody needs."""
    declared = {
        el.text.strip()
        for tag in ("depend", "exec_depend")
        for el in _package_xml().findall(tag)
        if el.text.strip().endswith(("_msgs", "_srvs", "_interfaces"))
    }
    sources = sorted((ROOT / "sphere_reg_ros").rglob("*.py")) + sorted(
        (ROOT / "launch").glob("*.py")
    )
    unused = declared - set(_imported_modules(sources))
    assert not unused, f"declared in package.xml but imported nowhere: {sorted(unused)}"


def test_pip_dependencies_are_pinned_in_requirements():
    pins = {
        line.split("==")[0].split("[")[0].strip().lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    unpinned = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "==" not in line
    ]
    assert not unpinned, f"unpinned requirements: {unpinned}"
    for name in ("diffdrr", "timm", "pynrrd", "torch", "torchvision", "ros-rclpy"):
        assert name in pins, f"{name} is not pinned in requirements.txt"


@pytest.mark.parametrize("directory", ["launch", "config"])
def test_installed_data_directories_exist(directory):
    assert (ROOT / directory).is_dir()


def test_ros_workspace_requirements_match_the_pins():
    def pins(name):
        return {
            line.split("==")[0].strip().lower(): line.split("==")[1].strip()
            for line in (ROOT / name).read_text().splitlines()
            if "==" in line and not line.startswith("#")
        }

    main, ros = pins("requirements.txt"), pins("requirements-ros.txt")
    assert ros, "requirements-ros.txt is empty"
    for name, version in ros.items():
        assert main.get(name) == version, f"{name}=={version} differs from requirements.txt"
