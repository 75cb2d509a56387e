from glob import glob

from setuptools import setup

package_name = "neon_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Neon",
    maintainer_email="neon@example.com",
    description="Launch files and parameters that run Neon's policy node (neon-ros) on a Unitree G1.",
    license="Apache-2.0",
)
