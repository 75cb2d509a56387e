"""ros2 launch neon_bringup g1.launch.py [model:=...] [server_url:=ws://...] [dry_run:=false] ...

Starts `neon-ros` (installed with `pip install neon-vla[ros]`) with the G1 parameters in
config/g1.yaml; the arguments below override them. dry_run defaults to true: trajectories go
to the preview topic until you say otherwise.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGUMENTS = [
    ("model", "", "checkpoint folder or Hub id ('' = the embedded tiny default)"),
    ("backbone", "", "with model '': fresh heads on this backbone id"),
    ("mode", "", "arms_only | whole_body ('' = the model's)"),
    ("server_url", "", "ws://host:port/ws of a neon-serve to use instead of in-process inference"),
    ("rate_hz", "5.0", "inference rate"),
    ("dry_run", "true", "publish trajectories on the preview topic only"),
    ("camera_topic", "/camera/color/image_raw", "head camera (sensor_msgs/Image)"),
    ("joint_states_topic", "/joint_states", "sensor_msgs/JointState"),
    ("instruction_topic", "/neon/instruction", "std_msgs/String"),
    ("audio_topic", "/neon/audio", "std_msgs/Int16MultiArray, 16 kHz mono"),
    ("lidar_topic", "/utlidar/cloud_livox_mid360", "sensor_msgs/PointCloud2"),
    ("trajectory_topic", "/neon/joint_trajectory", "trajectory_msgs/JointTrajectory out"),
]


def generate_launch_description():
    params_file = os.path.join(get_package_share_directory("neon_bringup"), "config", "g1.yaml")
    args = [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
    overrides = {
        "model": LaunchConfiguration("model"),
        "backbone": LaunchConfiguration("backbone"),
        "mode": LaunchConfiguration("mode"),
        "server_url": LaunchConfiguration("server_url"),
        "rate_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
        "dry_run": ParameterValue(LaunchConfiguration("dry_run"), value_type=bool),
        "camera_topic": LaunchConfiguration("camera_topic"),
        "joint_states_topic": LaunchConfiguration("joint_states_topic"),
        "instruction_topic": LaunchConfiguration("instruction_topic"),
        "audio_topic": LaunchConfiguration("audio_topic"),
        "lidar_topic": LaunchConfiguration("lidar_topic"),
        "trajectory_topic": LaunchConfiguration("trajectory_topic"),
    }
    node = Node(executable="neon-ros", name="neon", output="screen", parameters=[params_file, overrides])
    return LaunchDescription([*args, node])
