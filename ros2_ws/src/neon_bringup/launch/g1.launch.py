"""ros2 launch neon_bringup g1.launch.py [model:=...] [server_url:=ws://...] [dry_run:=false] ...

Starts `neon-ros` (installed with `pip install neon-vla[ros]`; activate Neon's environment first,
so that it is on PATH) with the G1 parameters in config/g1.yaml; the arguments below override
them. dry_run defaults to true: trajectories go to the preview topic until you say otherwise.
If the node dies (a bad parameter, a model that cannot load), the whole launch ends with it.
"""

import os
import shutil

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# name, default, parameter type (the node's), description. Every value is typed: `model:=2024` stays a string.
ARGUMENTS = [
    ("model", "", "str", "checkpoint folder or Hub id ('' = the embedded tiny default)"),
    ("backbone", "", "str", "with model '': fresh (untrained, so dry-run only) heads on this backbone id"),
    ("mode", "", "str", "arms_only | whole_body ('' = the model's)"),
    ("server_url", "", "str", "ws://host:port/ws of a neon-serve to use instead of in-process inference"),
    ("token_file", "", "str", "file holding the server's token (NEON_TOKEN=... as in /etc/neon/token.env)"),
    ("rate_hz", "5.0", "float", "inference rate"),
    ("dry_run", "true", "bool", "publish trajectories on the preview topic only"),
    ("camera_topic", "/camera/color/image_raw", "str", "head camera (sensor_msgs/Image)"),
    ("joint_states_topic", "/joint_states", "str", "sensor_msgs/JointState"),
    ("instruction_topic", "/neon/instruction", "str", "std_msgs/String"),
    ("audio_topic", "/neon/audio", "str", "std_msgs/Int16MultiArray, 16 kHz mono"),
    ("lidar_topic", "/utlidar/cloud_livox_mid360", "str", "sensor_msgs/PointCloud2"),
    ("trajectory_topic", "/neon/joint_trajectory", "str", "trajectory_msgs/JointTrajectory out"),
]
TYPES = {"str": str, "float": float, "bool": bool, "int": int}


def generate_launch_description():
    executable = shutil.which("neon-ros")
    if executable is None:
        raise RuntimeError("neon-ros is not on PATH: activate Neon's environment (source .venv/bin/activate) "
                           "before `ros2 launch neon_bringup g1.launch.py`")
    params_file = os.path.join(get_package_share_directory("neon_bringup"), "config", "g1.yaml")
    args = [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, _, doc in ARGUMENTS]
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=TYPES[kind])
                 for name, _, kind, _ in ARGUMENTS}
    node = Node(executable=executable, name="neon", output="screen", parameters=[params_file, overrides],
                on_exit=Shutdown(reason="neon-ros exited"))
    return LaunchDescription([*args, node])
