"""ROS-free core of sphere_reg_ros: volumes, C-arm geometry, DRRs, SE(3)/SO(4), metrics.

Nothing under this package may import rclpy, ROS message packages, cv_bridge or tf2
(``test/core/test_ros_free.py`` enforces it).

Conventions used throughout:

* A pose is a batched ``(B, 4, 4)`` tensor ``T_ct_from_carm`` mapping points in the C-arm
  optical frame (x right along image columns, y down along image rows, z from the X-ray
  source towards the detector; origin at the source) to the CT's world frame (RAS, mm).
* Tangent vectors are ``(B, 6)`` = ``(v, w)``: translation part first (mm), rotation part
  second (rad), as in Sophus and kornia.
* Increments are left-multiplied: ``T <- exp(delta) @ T`` (``delta`` expressed in CT world).
"""
