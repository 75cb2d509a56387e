"""`neon-g1`: action chunks onto the Unitree G1's arms over rt/arm_sdk (and Dex3 hands), with the safety on the robot side.

- `bridge`: the joint layout, the per-tick safety logic (ramps, velocity clamp, limits, watchdog) and the DDS link.
- `inputs`: chunks from a running neon-serve or neon-ros's /neon/joint_trajectory; the ROS side (camera, /joint_states).
- `cli`: the `neon-g1` command. Dry run unless --engage.

Needs the `g1` extra (cyclonedds 0.10.x) and ROS 2 (rclpy) for the camera, instruction and trajectory topics.
"""
