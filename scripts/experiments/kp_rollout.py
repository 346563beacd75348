# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (row E6): one closed-loop rollout printing the hand, the goal, the goal keypoint and the readout.

    python scripts/experiments/kp_rollout.py TASK SEED POLICY_DIR
"""
import sys; sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", ".."))
import numpy as np, torch, gymnasium as gym, sim
from vla.policy import VLAPolicy
from sim.chunking import ChunkQueue
task = sys.argv[1]; seed = int(sys.argv[2]); pol = VLAPolicy.load(sys.argv[3])
env = gym.make("vla-sim/MetaWorld-reach-v3", cameras=("corner",), image_size=128, instructions="heldout")
obs, info = env.reset(seed=seed, options={"task": task})
T = env.unwrapped.camera_poses()[0]; K = obs["intrinsics"][0]
def proj(p):
    c = np.linalg.inv(T) @ np.r_[p, 1]; uv = K @ c[:3]; return uv[:2] / uv[2]
print(obs["instruction"])
for t in range(200):
    b = {k: [v] if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}
    with torch.inference_mode():
        inp = pol.prepare(b); logits, pred, maps = pol(**inp, privileged=True, heatmaps=True)
        kp = pol.keypoint_encoder(inp["rgb"], inp["depth"], inp["intrinsics"])
    a = pol.action_grid.decode(pol.tokens_from_logits(logits).numpy())[0]
    raw = info["raw_obs"]
    if t % 10 == 0:
        g = (kp[0, 2, :2].numpy() + 1) / 2 * 128; o = (kp[0, 0, :2].numpy() + 1) / 2 * 128
        print(t, "hand", raw[:3].round(3), "goal", raw[36:39].round(3), "obj", raw[4:7].round(3), "| kp goal px", g.round(1), "true", proj(raw[36:39]).round(1), "| kp obj px", o.round(1), "true", proj(raw[4:7]).round(1), "| readout goal", pred[0, 6:9].numpy().round(3), "act", a[0].round(2))
    for k in range(2):
        obs, r, term, trunc, info = env.step(a[k])
        if term or trunc: break
    if term or trunc: print("end", t, info["success"]); break
