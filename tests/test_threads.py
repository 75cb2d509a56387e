"""Every Neon command takes its torch thread count deliberately (default 1), and refuses a bad one."""

import pytest
import torch

from neon.threads import DEFAULT_THREADS, set_threads


def test_set_threads_sets_torch_and_refuses_nonsense():
    before = torch.get_num_threads()
    try:
        assert set_threads() == DEFAULT_THREADS == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        for bad in (0, -1, 1.5, "2"):
            with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["neon_runtime.cli", "neon_train.cli"])
def test_the_commands_take_threads_and_refuse_zero(command, capsys):
    import importlib

    module = importlib.import_module(command)
    assert module.build_parser().parse_args([]).threads == 1
    before = torch.get_num_threads()
    try:
        assert module.main(["--threads", "0"]) == 2
    finally:
        torch.set_num_threads(before)
    assert "threads must be a whole number >= 1, got 0" in capsys.readouterr().err


def test_neon_ros_has_a_threads_parameter():
    pytest.importorskip("rclpy", reason="ROS 2 wheels (ros-kilted-*) are installed by scripts/setup.sh")
    from neon_runtime.ros.node import PARAMETERS

    assert PARAMETERS["threads"] == 1
