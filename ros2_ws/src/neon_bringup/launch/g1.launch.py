"""ros2 launch neon_bringup g1.launch.py [model:=...] [network_interface:=eth0] [dry_run:=false engage:=true] ...

Starts Neon's robot-side stack for a Unitree G1 (activate Neon's environment first, so that `neon-ros`
and `neon-g1` are on PATH):

- `neon-ros`, the policy node, with the parameters in config/g1.yaml (section `neon`); the node
  arguments below override them.
- `neon-g1 --ros`, the bridge: it republishes the robot's rt/lowstate as /joint_states for the node,
  executes the node's /neon/joint_trajectory on rt/arm_sdk at control_rate_hz, and takes the rest of its
  settings (speed limit, ramps, watchdog, gains) from config/g1.yaml (section `neon_g1`).

Nothing moves by default: dry_run:=true makes the node publish previews only, and the bridge runs in dry
run (computes and logs, publishes nothing on rt/arm_sdk) unless dry_run:=false AND engage:=true.
If either process exits (a bad parameter, a model that cannot load, no rt/lowstate), the whole launch
ends with it, and the bridge's release ramp runs on the way out.

`commands()` is the whole description as plain argv lists: ROS 2's launch system only wraps it, and the
test suite (which cannot run `ros2 launch`) starts exactly these commands.
"""

import json
import os
import shutil

import yaml

# name, default, type, description. Node arguments become neon-ros parameters of the node's own type
# (`model:=2024` stays a string).
ARGUMENTS = [
    ("model", "", "str", "checkpoint folder or Hub id ('' = the embedded tiny default)"),
    ("backbone", "", "str", "with model '': fresh (untrained, so dry-run only) heads on this backbone id"),
    ("mode", "", "str", "arms_only | whole_body ('' = the model's)"),
    ("server_url", "", "str", "ws://host:port/ws of a neon-serve to use instead of in-process inference"),
    ("token_file", "", "str", "file holding the server's token (NEON_TOKEN=... as in /etc/neon/token.env)"),
    ("rate_hz", "5.0", "float", "full requests per second (with heads_hz: backbone feature refreshes)"),
    ("heads_hz", "0.0", "float", "two-rate control: heads-only passes per second on fresh joint state (0: off)"),
    ("blend_s", "0.2", "float", "seconds over which a new chunk takes over from the one in force"),
    ("dry_run", "true", "bool", "publish trajectories on the preview topic only (and keep the bridge in dry run)"),
    ("camera_topic", "/camera/color/image_raw", "str", "head camera (sensor_msgs/Image)"),
    ("joint_states_topic", "/joint_states", "str", "sensor_msgs/JointState"),
    ("instruction_topic", "/neon/instruction", "str", "std_msgs/String"),
    ("audio_topic", "/neon/audio", "str", "std_msgs/Int16MultiArray, 16 kHz mono"),
    ("lidar_topic", "/utlidar/cloud_livox_mid360", "str", "sensor_msgs/PointCloud2"),
    ("trajectory_topic", "/neon/joint_trajectory", "str", "trajectory_msgs/JointTrajectory out"),
]
# name, default, type, neon-g1 flag, description.
BRIDGE_ARGUMENTS = [
    ("engage", "false", "bool", "--engage", "with dry_run:=false: move the robot's arms (rt/arm_sdk)"),
    ("network_interface", "eth0", "str", "--interface", "network interface wired to the G1 ('lo': a simulator)"),
    ("dds_domain", "0", "int", "--domain", "DDS domain of rt/lowstate and rt/arm_sdk (0: the robot's)"),
    ("control_rate_hz", "250.0", "float", "--rate-hz", "rt/arm_sdk rate, >= 50"),
]
TYPES = {"str": str, "float": float, "bool": bool, "int": int}
NODE_NAME, BRIDGE_NAME = "neon", "neon_g1"


def typed(name: str, value: str, kind: str):
    """A launch argument's text as its declared type; a clear error otherwise."""
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"launch argument {name} must be true or false, got {value!r}")
        return value.lower() == "true"
    try:
        return TYPES[kind](value)
    except ValueError:
        raise ValueError(f"launch argument {name} must be {kind}, got {value!r}") from None


def defaults() -> dict[str, str]:
    return {name: default for name, default, *_ in ARGUMENTS + BRIDGE_ARGUMENTS}


def commands(values: dict[str, str], params_file: str, neon_ros: str = "neon-ros", neon_g1: str = "neon-g1") -> dict:
    """{process name: argv} for the launch argument `values` (text, as given on the command line)."""
    values = {**defaults(), **values}
    unknown = set(values) - set(defaults())
    if unknown:
        raise ValueError(f"unknown launch argument(s): {', '.join(sorted(unknown))}")
    node = [neon_ros, "--ros-args", "-r", f"__node:={NODE_NAME}", "--params-file", params_file]
    for name, _, kind, _ in ARGUMENTS:
        value = typed(name, values[name], kind)
        # JSON is YAML, which is how ROS reads `-p` values: "2024" stays a string, 5 stays a float (5.0).
        node += ["-p", f"{name}:={json.dumps(value if kind != 'float' else float(value))}"]
    bridge = [neon_g1, "--ros", "--trajectory-topic", values["trajectory_topic"],
              "--joint-states-topic", values["joint_states_topic"]]
    for name, _, kind, flag, _ in BRIDGE_ARGUMENTS:
        value = typed(name, values[name], kind)
        if kind != "bool":
            bridge += [flag, str(value)]
    if typed("engage", values["engage"], "bool") and not typed("dry_run", values["dry_run"], "bool"):
        bridge.append("--engage")
    with open(params_file) as f:
        settings = ((yaml.safe_load(f) or {}).get(BRIDGE_NAME) or {}).get("ros__parameters") or {}
    for key, value in settings.items():  # config/g1.yaml's neon_g1 section: flag name -> value
        bridge += [f"--{key.replace('_', '-')}", str(value)]
    return {NODE_NAME: node, BRIDGE_NAME: bridge}


def generate_launch_description():
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, Shutdown
    from launch.substitutions import LaunchConfiguration

    executables = {}
    for name in ("neon-ros", "neon-g1"):
        executables[name] = shutil.which(name)
        if executables[name] is None:
            raise RuntimeError(f"{name} is not on PATH: activate Neon's environment (source .venv/bin/activate) "
                               "before `ros2 launch neon_bringup g1.launch.py`")
    params_file = os.path.join(get_package_share_directory("neon_bringup"), "config", "g1.yaml")

    def processes(context):
        values = {name: LaunchConfiguration(name).perform(context) for name in defaults()}
        argv = commands(values, params_file, executables["neon-ros"], executables["neon-g1"])
        return [ExecuteProcess(cmd=cmd, name=name, output="screen", sigterm_timeout="5",
                               on_exit=Shutdown(reason=f"{name} exited")) for name, cmd in argv.items()]

    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, default, _, doc in ARGUMENTS] + [DeclareLaunchArgument(name, default_value=default, description=doc)
                                                        for name, default, _, _, doc in BRIDGE_ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=processes)])
