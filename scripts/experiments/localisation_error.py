# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (sixth session): the keypoint readout's position error on reset frames, training seeds
(0..N-1) against held-out seeds (1,000,000+), per task: mean |error| per axis and the median distance, in cm.

    python scripts/experiments/localisation_error.py POLICY_DIR N TASK[,TASK...]
"""
import os, sys; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import numpy as np, torch, gymnasium as gym, sim
from sim import schema
from vla.policy import VLAPolicy
pol = VLAPolicy.load(sys.argv[1]); n = int(sys.argv[2])
env = gym.make("vla-sim/MetaWorld-reach-v3", cameras=("corner",), image_size=128)
for task in sys.argv[3].split(","):
    for name, base in (("train", 0), ("heldout", 1000000)):
        errs = []
        for k in range(n):
            obs, info = env.reset(seed=base + k, options={"task": task})
            b = {kk: [v] if isinstance(v, str) else np.asarray(v)[None] for kk, v in obs.items()}
            with torch.inference_mode():
                inp = pol.prepare(b)
                est = pol.estimate_positions(inp["rgb"], inp["depth"], inp["intrinsics"])[0].numpy()
            true = info["raw_obs"][schema.PRIVILEGED_INDEX]
            errs.append(np.abs(est - true).reshape(3, 3))
        e = np.array(errs)  # (n, 3 targets, 3 xyz)
        print(f"{task:18s} {name:8s} obj xyz cm {np.round(e[:,0].mean(0)*100,1)}  goal xyz cm {np.round(e[:,2].mean(0)*100,1)}  obj |e| median {np.median(np.linalg.norm(e[:,0],axis=1))*100:.1f} goal {np.median(np.linalg.norm(e[:,2],axis=1))*100:.1f}")
