"""The G1's own DDS wire: Unitree's CycloneDDS topics, spoken without Unitree's SDK.

- `idl`: the unitree_hg message types (LowCmd_, LowState_, HandCmd_, HandState_, ...) and the topic → type table.
- `crc`: the CRC32 the robot checks on LowCmd_ (and sends on LowState_).
- `dds`: participants bound to one network interface and domain; `loopback()` for tests and simulators.

`crc` needs nothing beyond the standard library; `idl` and `dds` need the `g1` extra (cyclonedds 0.10.x).
"""
