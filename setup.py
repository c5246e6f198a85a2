"""ament_python package definition for sphere_reg_ros (colcon build and pip install -e .)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sphere_reg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/*.pt", "data/*.json"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    extras_require={"peers": ["xvreg==0.1.0"]},
    zip_safe=True,
    maintainer="sphere_reg_ros developers",
    maintainer_email="sphere-reg-ros@example.org",
    description="Intraoperative 2D/3D C-arm to CT registration with spherical similarity "
    "learning and differentiable Levenberg-Marquardt, as a ROS 2 package.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "sphere-reg = sphere_reg_ros.cli:main",
            "carm_simulator = sphere_reg_ros.ros.carm_simulator:main",
            "registration_node = sphere_reg_ros.ros.registration_node:main",
            "demo_evaluator = sphere_reg_ros.ros.demo:evaluator_main",
        ],
    },
)
