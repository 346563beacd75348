"""VLA policy service: CLIP dual encoder + CoOp prompts + SpatialVLA-style policy head, served over gRPC."""

__version__ = "0.1.0"
