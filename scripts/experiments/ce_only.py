# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (row L5): the heatmap cross-entropy alone on the random-layout frames.

    python scripts/experiments/ce_only.py LR STEPS
"""
import sys, time; sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", ".."))
import numpy as np, torch
from vla.policy.keypoints import KeypointEncoder, project_to_cells


def heatmap_loss(maps, points, pose, K, hw):  # the cross-entropy term of keypoint_loss, as it was run
    cell, ok = project_to_cells(points, pose, K, hw, maps.shape[-2:])
    logp = maps.flatten(2).clamp_min(1e-12).log().gather(2, cell[..., None])[..., 0]
    return -(logp * ok).sum() / ok.sum().clamp_min(1)
torch.manual_seed(0)
z = np.load(__import__("os").environ.get("VLA_WORK", "/root/vla-work") + "/diag/reset_train.npz", allow_pickle=False)
R = torch.tensor(z["rgb"][:, 0]); D = torch.tensor(z["depth"][:, 0].astype(np.float32)); P = torch.tensor(z["priv"]).reshape(-1, 3, 3)
K = torch.tensor(z["K"][0], dtype=torch.float32)
pose = torch.tensor([[0.707107, -0.19245, 0.680414, -1.1], [-0.707107, -0.19245, 0.680414, -0.4], [0.0, -0.96225, -0.272166, 0.6], [0, 0, 0, 1.0]])
enc = KeypointEncoder(32); lr = float(sys.argv[1])
opt = torch.optim.AdamW(enc.parameters(), lr)
t0 = time.time()
for s in range(int(sys.argv[2])):
    idx = torch.randint(len(R), (32,))
    f, hm = enc(R[idx][:, None], D[idx][:, None], K.expand(32, 1, 3, 3), return_heatmaps=True)
    loss = heatmap_loss(hm[:, 0, :3], P[idx], pose, K.expand(32, 3, 3), (128, 128))
    opt.zero_grad(); loss.backward(); opt.step()
    if s % 25 == 0: print(s, round(time.time() - t0), float(loss), enc.log_temp.exp()[:3].tolist(), flush=True)
