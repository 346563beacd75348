# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (rows L1-L4 of docs/policy_experiments.md, kept as run): can the keypoint path localise?

Trains a KeypointEncoder alone on the object/goal positions of the expert frames plus random-layout first frames
(reset_frames.py) for a fixed wall-time budget and reports the 3-D error on held-out layouts.

    python scripts/experiments/reset_frames.py 400 500000 $VLA_WORK/diag/reset_train.npz
    python scripts/experiments/reset_frames.py 20 1000000 $VLA_WORK/diag/reset_eval.npz
    python scripts/experiments/localise_only.py SECONDS USE_EPISODES(0/1) USE_RESETS(0/1) [mlp|direct] [ce]

mlp: an MLP over all keypoints + task one-hot (L1); direct: keypoint j -> target j by an affine map started at
the corner camera's pose (L3), with ce the heatmap cross-entropy at the projected target (L4, weight 0.1).
"""
import os, sys, time; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.environ.get("VLA_WORK", "/root/vla-work")
import numpy as np, torch, torch.nn.functional as F
from sim import schema
from sim.episodes import scan, EpisodeReader
from vla.policy.keypoints import KeypointEncoder
torch.manual_seed(0)
budget = float(sys.argv[1]); mode = sys.argv[4] if len(sys.argv) > 4 else "mlp"; ce = len(sys.argv) > 5; use_eps = sys.argv[2] == "1"; use_reset = sys.argv[3] == "1"
TASKS = list(schema.MT10)
R, D, P, T = [], [], [], []
if use_eps:
    meta, _ = scan(WORK + "/expert_raw")
    for m in meta:
        r = EpisodeReader(WORK + "/expert_raw/" + m["file"])
        with np.load(r.path, allow_pickle=False) as z:
            for t in range(r.length):
                R.append(z[f"rgb_{t:04d}"][0]); D.append(z[f"depth_{t:04d}"][0].astype(np.float16) / 1000)
        P.extend(r.raw_obs[:, schema.PRIVILEGED_INDEX]); T.extend([TASKS.index(m["task"])] * r.length)
    Kmat = r.intrinsics
if use_reset:
    z = np.load(WORK + "/diag/reset_train.npz", allow_pickle=False)
    R.extend(z["rgb"][:, 0]); D.extend(z["depth"][:, 0]); P.extend(z["priv"]); T.extend(z["task"]); Kmat = z["K"]
R = torch.tensor(np.array(R)); D = torch.tensor(np.array(D, np.float16)); P = torch.tensor(np.array(P, np.float32)); T = torch.tensor(np.array(T))
Kt = torch.tensor(np.asarray(Kmat, np.float32).reshape(1, 1, 3, 3))
print("frames", len(R), flush=True)
mean = torch.stack([P[T == i].mean(0) for i in range(10)]); std = torch.sqrt(torch.stack([P[T == i].var(0) for i in range(10)]).mean(0)).clamp_min(1e-3)
ev = np.load(WORK + "/diag/reset_eval.npz", allow_pickle=False)
eR, eD, eP, eT = torch.tensor(ev["rgb"]), torch.tensor(ev["depth"].astype(np.float32)), torch.tensor(ev["priv"]), torch.tensor(ev["task"])
K = 32
enc = KeypointEncoder(K)
head = torch.nn.Sequential(torch.nn.Linear(K * 5 + 10, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 9))
direct = torch.nn.ModuleList(torch.nn.Linear(5, 3) for _ in range(3))
if mode == "direct":
    Tc = torch.tensor([[0.70710678, -0.19245009, 0.68041382, -1.1], [-0.70710678, -0.19245009, 0.68041382, -0.4], [0.0, -0.96225045, -0.27216553, 0.6]])
    with torch.no_grad():
        for lin in direct:
            lin.weight.zero_(); lin.weight[:, 2:5] = Tc[:, :3] * 2; lin.bias.copy_(Tc[:, 3])
params = list(enc.parameters()) + list(head.parameters()) + list(direct.parameters())
opt = torch.optim.AdamW(params, 1e-3, weight_decay=1e-4)
Kin = Kt[0, 0]
Rt = torch.tensor([[0.70710678, -0.19245009, 0.68041382, -1.1], [-0.70710678, -0.19245009, 0.68041382, -0.4], [0.0, -0.96225045, -0.27216553, 0.6]])
def target_cells(priv):
    p = priv.reshape(-1, 3, 3)  # (B, 3 targets, xyz world)
    c = (p - Rt[:, 3]) @ Rt[:, :3]  # camera frame: R^T (p - t)
    uv = c @ Kin.T; px, py = uv[..., 0] / uv[..., 2], uv[..., 1] / uv[..., 2]
    gx, gy = (px / 128 * 64).floor().long(), (py / 128 * 64).floor().long()
    ok = (gx >= 0) & (gx < 64) & (gy >= 0) & (gy < 64)
    return gy.clamp(0, 63) * 64 + gx.clamp(0, 63), ok
HM = {}
def ce_loss(rgb, dep, priv):
    hm = HM["hm"][:, 0, :3].flatten(2)  # (B, 3, 4096)
    cell, ok = target_cells(priv)
    lp = torch.log(hm.clamp_min(1e-9)).gather(2, cell[..., None])[..., 0]
    return -(lp * ok).sum() / ok.sum().clamp_min(1)
def predict(rgb, dep, task):
    f, HM["hm"] = enc(rgb[:, None], dep[:, None].float(), Kt.expand(len(rgb), 1, 3, 3), return_heatmaps=True)
    if mode == "direct":
        return torch.cat([direct[j](f[:, j]) for j in range(3)], 1)
    oh = F.one_hot(task, 10).float()
    return head(torch.cat([f.flatten(1), oh], 1)) * std + mean[task]
def evaluate():
    enc.eval(); head.eval()
    with torch.no_grad():
        pr = torch.cat([predict(eR[i:i+100, 0], eD[i:i+100, 0], eT[i:i+100]) for i in range(0, len(eR), 100)])
    enc.train(); head.train()
    err = (pr - eP).reshape(-1, 3, 3).norm(dim=-1) * 100  # cm, per target
    base = (mean[eT] - eP).reshape(-1, 3, 3).norm(dim=-1) * 100
    rows = []
    for i, t in enumerate(TASKS):
        m = eT == i
        rows.append(f"{t[:-3]}: obj {err[m,0].mean():.1f}/{base[m,0].mean():.1f} goal {err[m,2].mean():.1f}/{base[m,2].mean():.1f}")
    return err.mean().item(), rows
t0 = time.time(); step = 0; nxt = 60
g = torch.Generator().manual_seed(0)
while time.time() - t0 < budget:
    idx = torch.randint(len(R), (64,), generator=g)
    pr = predict(R[idx], D[idx].float(), T[idx])
    loss = F.smooth_l1_loss((pr - mean[T[idx]]) / std, (P[idx] - mean[T[idx]]) / std)
    if ce: loss = loss + 0.1 * ce_loss(R[idx], D[idx].float(), P[idx])
    opt.zero_grad(); loss.backward(); opt.step(); step += 1
    if time.time() - t0 > nxt:
        e, rows = evaluate(); nxt += 120
        print(f"{time.time()-t0:.0f}s step {step} ({step*64/(time.time()-t0):.0f} img/s) loss {loss.item():.4f} eval mean err {e:.2f} cm", flush=True)
e, rows = evaluate(); print("final", e); print("\n".join(rows))
from safetensors.torch import save_file  # noqa: E402
save_file({**{"enc." + k: v.contiguous() for k, v in enc.state_dict().items()}}, WORK + "/diag/loc.safetensors")
