"""Simulation: Meta-World v3 as RGB-D + language gymnasium environments, expert data, evaluation.

Importing `sim` registers the gymnasium ids `vla-sim/MetaWorld-<task>` (cheap: mujoco loads on first make).
Contracts (observation, action, policy, dataset layout): sim.schema.
"""


def register_envs() -> None:
    """Register `vla-sim/MetaWorld-<task>` for the 50 tasks (idempotent)."""
    import gymnasium as gym

    from sim.language import INSTRUCTIONS

    for task in INSTRUCTIONS:
        env_id = f"vla-sim/MetaWorld-{task}"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="sim.env:MetaWorldRGBD", kwargs={"task": task})


register_envs()
