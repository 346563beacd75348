"""Text prompts for the CLIP text tower: hand-written templates and CoOp/CoCoOp learned context."""
