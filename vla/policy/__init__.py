"""The VLA policy (SpatialVLA-style head over CLIP): config, model, checkpoint, action grids, Ego3D.

`PolicyConfig` imports without torch; `VLAPolicy` and `ActionGrid` are imported on first use so that
`from vla.policy import PolicyConfig` stays cheap for the CLI and the server's argument parsing.
"""

from vla.policy.config import PolicyConfig

__all__ = ["PolicyConfig", "VLAPolicy", "ActionGrid"]


def __getattr__(name: str):
    if name == "VLAPolicy":
        from vla.policy.model import VLAPolicy

        return VLAPolicy
    if name == "ActionGrid":
        from vla.policy.action_grid import ActionGrid

        return ActionGrid
    raise AttributeError(f"module 'vla.policy' has no attribute {name!r}")
