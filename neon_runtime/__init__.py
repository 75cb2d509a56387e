"""Neon's runtime: server, ROS 2 node, G1 bridge (neon-g1), chunk executor, ONNX heads and the safety layer.

Imports `neon`, never `neon_train`."""
