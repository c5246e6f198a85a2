"""sphere_reg_ros: intraoperative 2D/3D registration (C-arm X-ray to CT) for ROS 2."""

__version__ = "0.1.0"
