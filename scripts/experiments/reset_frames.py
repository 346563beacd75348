# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (docs/policy_experiments.md, rows L1-L4): random-layout first frames with their object/goal
positions, N seeds per MT10 task from SEED_BASE: reset + one render each (~30 ms).

    python scripts/experiments/reset_frames.py N SEED_BASE OUT.npz
"""
import os, sys; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import numpy as np, gymnasium as gym, sim
from sim import schema
n = int(sys.argv[1]); base = int(sys.argv[2]); out = sys.argv[3]
env = gym.make("vla-sim/MetaWorld-reach-v3", cameras=("corner",), image_size=128)
R, D, P, T = [], [], [], []
for ti, task in enumerate(schema.MT10):
    for k in range(n):
        obs, info = env.reset(seed=base + k, options={"task": task})
        R.append(obs["rgb"]); D.append(obs["depth"]); P.append(info["raw_obs"][schema.PRIVILEGED_INDEX]); T.append(ti)
    print(task, flush=True)
np.savez(out, rgb=np.array(R), depth=np.array(D).astype(np.float16), priv=np.array(P, np.float32), task=np.array(T),
         K=obs["intrinsics"])
