"""Launch files and parameters for Neon's policy node; the node itself is `neon-ros` from the neon package."""
