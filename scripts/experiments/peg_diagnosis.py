# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (seventh session): where a policy's peg-insert-side episodes fail, and whether the
perception is the cause. Each held-out episode is run closed-loop (horizon 2, 500 steps) with the head fed
either the readout's estimates (`est`), the estimates with the true hole (`true-goal`), or every true position
(`true-all`); per episode: success, whether the peg was lifted, the closest the peg head came to the hole, and
the readout's error on the hole's y (the axis the expert aligns before inserting).

    python scripts/experiments/peg_diagnosis.py POLICY_DIR MODE N [TASK]
"""
import os, sys; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import numpy as np, torch, gymnasium as gym, sim
from sim import schema
from vla.policy import VLAPolicy

pol = VLAPolicy.load(sys.argv[1]); mode = sys.argv[2]; n = int(sys.argv[3])
task = sys.argv[4] if len(sys.argv) > 4 else "peg-insert-side-v3"
env = gym.make("vla-sim/MetaWorld-reach-v3", cameras=("corner",), image_size=128, instructions="heldout")
idx = schema.PRIVILEGED_INDEX
wins = 0
for k in range(n):
    seed = 1000000 + k
    obs, info = env.reset(seed=seed, options={"task": task})
    mw = env.unwrapped._mw
    z0 = info["raw_obs"][6]
    lifted, closest, yerr, success, t = False, 9.0, [], False, 0
    while t < 500 and not success:
        b = {kk: [v] if isinstance(v, str) else np.asarray(v)[None] for kk, v in obs.items()}
        with torch.inference_mode():
            inp = pol.prepare(b)
            est = pol.estimate_positions(inp["rgb"], inp["depth"], inp["intrinsics"]).float()
            true = torch.as_tensor(info["raw_obs"][idx], dtype=torch.float32)[None]
            yerr.append(abs(float(est[0, 7] - true[0, 7])))
            pos = est.clone()
            if mode == "true-goal":
                pos[:, 6:9] = true[:, 6:9]
            elif mode == "true-all":
                pos = true
            normalised = pol(**inp, positions=pos).float().numpy()
        chunk = pol.actions_from_normalised(normalised)[0]  # as predict() decodes it
        for a in chunk[:2]:
            obs, _, term, trunc, info = env.step(a)
            t += 1
            raw = info["raw_obs"]
            lifted |= raw[6] > z0 + 0.03
            closest = min(closest, float(np.linalg.norm(mw._get_site_pos("pegHead") - mw._target_pos)))
            success |= info["success"]
            if success or term or trunc:
                break
    wins += success
    print(f"seed {seed} success {int(success)} steps {t} lifted {int(lifted)} closest {closest*100:.1f} cm "
          f"hole-y error reset {yerr[0]*100:.1f} cm mean {np.mean(yerr)*100:.1f} cm", flush=True)
print(f"{mode}: {wins}/{n}")
