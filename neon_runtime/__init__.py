"""Neon's runtime: server, ROS 2 node, ONNX heads and the safety layer. Imports `neon`, never `neon_train`."""
