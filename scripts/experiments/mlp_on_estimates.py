# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (row S-est): the MLP of scripts/bc_from_state.py on a keypoint policy's *estimated* positions.

    python scripts/experiments/mlp_on_estimates.py DATA POLICY EPISODES_PER_TASK
"""
import os, sys, time, warnings; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import numpy as np, torch
from sim import schema
from sim.episodes import scan, EpisodeReader
from vla.policy import VLAPolicy
warnings.simplefilter("ignore")
data, pol_path, n_eval = sys.argv[1], sys.argv[2], int(sys.argv[3])
pol = VLAPolicy.load(pol_path)
TASKS = list(schema.MT10)
K = torch.tensor(np.asarray(pol.stats["intrinsics"]["corner"], np.float32))[None, None]

@torch.inference_mode()
def estimate(rgb, depth):  # (B, 1, H, W, 3) uint8, (B, 1, H, W) m -> (B, 9)
    kp = pol.keypoint_encoder(torch.as_tensor(rgb), torch.as_tensor(depth), K.expand(len(rgb), 1, 3, 3))
    return pol.privileged_head(kp).clamp(-2, 2).numpy()

t0 = time.time(); X, Y = [], []
for m in scan(data)[0]:
    r = EpisodeReader(os.path.join(data, m["file"])); tid = TASKS.index(m["task"])
    frames = [r.frame(t) for t in range(r.length)]
    est = np.concatenate([estimate(np.stack([f[0] for f in frames[i:i + 64]]), np.stack([f[1] for f in frames[i:i + 64]]))
                          for i in range(0, r.length, 64)])
    oh = np.zeros((r.length, 10), np.float32); oh[:, tid] = 1
    X.append(np.concatenate([r.state, est, oh], 1)); Y.append(r.actions)
X, Y = torch.tensor(np.concatenate(X), dtype=torch.float32), torch.tensor(np.concatenate(Y))
print("estimated", len(X), "frames in", round(time.time() - t0), "s", flush=True)
mu, sd = X.mean(0), X.std(0).clamp_min(1e-3)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                          torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4); sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5000)
g = torch.Generator().manual_seed(0)
for s in range(5000):
    idx = torch.randint(len(X), (256,), generator=g)
    loss = torch.nn.functional.mse_loss(net((X[idx] - mu) / sd), Y[idx]); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
print("mse", float(loss), flush=True); net.eval()
from sim.env import MetaWorldRGBD
env = MetaWorldRGBD(task=TASKS[0], image_size=128)
res = {}
for tid, task in enumerate(TASKS):
    ok = 0
    for k in range(n_eval):
        obs, info = env.reset(seed=schema.EVAL_SEED_BASE + k, options={"task": task})
        for t in range(500):
            est = estimate(obs["rgb"][None], obs["depth"][None])[0]
            oh = np.zeros(10, np.float32); oh[tid] = 1
            with torch.no_grad():
                a = net((torch.tensor(np.concatenate([obs["state"], est, oh]))[None] - mu) / sd)[0].numpy()
            obs, _, term, trunc, info = env.step(np.clip(a, -1, 1))
            if info["success"]: ok += 1; break
            if term or trunc: break
    res[task] = ok / n_eval; print(task, res[task], flush=True)
print("mean", np.mean(list(res.values())), "in", round(time.time() - t0), "s")
env.close()
