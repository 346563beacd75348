"""Training: overfitting a small dataset, exact resume after an interruption, DDP == one process, the pieces
(schedule, batch order, augmentation geometry) against hand computations, and the CLI end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.data import SyntheticDataset, augment, collate
from vla.policy.ego3d import backproject
from vla.train import TrainConfig, global_batch_indices, lr_at, train

ROOT = Path(__file__).resolve().parents[2]


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_overfits_a_small_dataset(tmp_path):
    """16 samples x 4 steps x 2 groups (full 16x32x8 translation grid): > 95% token accuracy."""
    ds = SyntheticDataset(16, seed=0)
    tc = TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, save_every=1000, log_every=10,
                     progress=False, augment=False)
    train(PolicyConfig.tiny(), ds, tmp_path, tc, resume=False)
    policy = VLAPolicy.load(tmp_path / "policy")
    b = collate([ds[i] for i in range(len(ds))])
    obs = {"rgb": b["rgb"], "depth": b["depth"], "intrinsics": b["intrinsics"], "state": b["state"],
           "instruction": b["instruction"]}
    pred = policy.predict_tokens(obs)
    target = policy.action_grid.encode(b["actions"])
    acc = (pred == target)[b["action_mask"]].float().mean()
    assert acc > 0.95, f"token accuracy {acc:.3f}"
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"] / 10
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


class _Kill(Exception):
    pass


def test_resume_after_interruption_continues_exactly(tmp_path):
    cfg = PolicyConfig.tiny(grid_bins={"translation": [4, 8, 4]})
    ds = SyntheticDataset(12, seed=4)
    tc = TrainConfig(steps=8, batch_size=4, lr=2e-3, warmup_steps=2, save_every=3, log_every=1, progress=False)
    train(cfg, ds, tmp_path / "full", tc, resume=False)

    def kill(step, rec):
        if step == 5:  # after the checkpoint at 3, before the one at 6
            raise _Kill

    with pytest.raises(_Kill):
        train(cfg, ds, tmp_path / "cut", tc, on_step=kill)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "train_config.json").read_text())
    assert saved["steps"] == 8
    summary = train(cfg, ds, tmp_path / "cut", tc)
    assert summary["start_step"] == 3
    full, cut = _state(tmp_path / "full" / "policy"), _state(tmp_path / "cut" / "policy")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_ddp_two_processes_match_one(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_ddp_check import check_config
    finally:
        sys.path.pop(0)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "train_ddp_check.py"), str(tmp_path / "ddp"), "3", "8"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg, ds, tc = check_config(3, 8)
    train(cfg, ds, tmp_path / "one", tc, resume=False)
    read = lambda d: [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa
    ddp, one = read("ddp"), read("one")
    assert [r["step"] for r in ddp] == [1, 2, 3]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["token_acc"] == pytest.approx(b["token_acc"])
    w_ddp, w_one = _state(tmp_path / "ddp" / "policy"), _state(tmp_path / "one" / "policy")
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], atol=2e-5, rtol=1e-4, msg=k)


def test_lr_schedule_hand_values():
    tc = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert lr_at(110, tc) == pytest.approx(1e-4)


def test_global_batches_cover_each_epoch_once():
    n, b = 10, 4
    idx = sum((global_batch_indices(s, n, b, seed=7) for s in range(5)), [])  # 20 = two epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10] != idx[10:]  # a new permutation per epoch
    assert global_batch_indices(3, n, b, seed=7) == idx[12:16]


def test_shift_augmentation_moves_depth_and_intrinsics_together():
    """A shifted image + its shifted depth + moved intrinsics back-project to the same 3D points."""
    ds = SyntheticDataset(2, image_size=(32, 32), seed=5)
    yy, xx = np.mgrid[0:32, 0:32]
    ds.depth[:] = (1.0 + 0.03 * xx + 0.02 * yy)[None, None]  # smooth depth: points vary across the image
    batch = collate([ds[0], ds[1]])
    g = torch.Generator().manual_seed(0)
    out = augment(batch, g, shift=0.125, jitter=0.0)
    assert out["rgb"].dtype == torch.uint8 and out["rgb"].shape == batch["rgb"].shape
    p0, _ = backproject(batch["depth"][:, :, None], batch["intrinsics"], 32, 4, 1)  # (B, 1, 64, 3)
    p1, _ = backproject(out["depth"][:, :, None], out["intrinsics"], 32, 4, 1)
    t = (out["intrinsics"][:, 0, :2, 2] - batch["intrinsics"][:, 0, :2, 2]).round().long()  # -(tx, ty)
    assert (t != 0).any()
    P0, P1 = p0.reshape(2, 8, 8, 3), p1.reshape(2, 8, 8, 3)
    for b in range(2):
        tx, ty = -int(t[b, 0]), -int(t[b, 1])
        if tx % 4 or ty % 4:  # compare at patch centres that map onto patch centres
            continue
        sy, sx = ty // 4, tx // 4
        ys = slice(max(0, -sy), min(8, 8 - sy))
        xs = slice(max(0, -sx), min(8, 8 - sx))
        src = P0[b, ys.start + sy : ys.stop + sy, xs.start + sx : xs.stop + sx]
        torch.testing.assert_close(P1[b, ys, xs], src, atol=1e-4, rtol=1e-4)
    for b in range(2):  # rgb shift: interior pixels come from the original at +t
        tx, ty = -int(t[b, 0]), -int(t[b, 1])
        y0, x0 = max(0, -ty), max(0, -tx)
        y1, x1 = min(32, 32 - ty), min(32, 32 - tx)
        assert torch.equal(out["rgb"][b, 0, y0:y1, x0:x1], batch["rgb"][b, 0, y0 + ty : y1 + ty, x0 + tx : x1 + tx])


def test_cli_trains_on_a_collected_episode_folder(tmp_path):
    import argparse

    from sim.episodes import write_episode
    from vla.commands import train as train_cmd

    root = tmp_path / "data"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"cameras": ["corner"], "image_size": 32}))
    rng = np.random.default_rng(0)
    K = np.array([[[30, 0, 16], [0, 30, 16], [0, 0, 1]]], np.float32)
    episodes = []
    for seed in (0, 1):
        L = 6
        arrays = {"actions": rng.uniform(-1, 1, (L, 4)).astype(np.float32),
                  "state": rng.normal(size=(L, 4)).astype(np.float32), "rewards": np.zeros(L, np.float32),
                  "success": np.zeros(L, bool), "intrinsics": K}
        meta = {"task": "reach-v3", "task_id": 0, "seed": seed, "instruction": "reach the goal",
                "cameras": ["corner"], "success": True}
        write_episode(root, meta, [rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(L)],
                      [rng.uniform(0.5, 2, (1, 32, 32)).astype(np.float32) for _ in range(L)], arrays)
        episodes.append({"file": f"reach-v3/reach-v3_s{seed:06d}.npz", "task": "reach-v3", "task_id": 0,
                         "seed": seed, "length": L, "instruction": "reach the goal"})
    manifest = {"format": "vla-sim-episodes", "version": 1, "cameras": ["corner"], "episodes": episodes}
    (root / "manifest.json").write_text(json.dumps(manifest))  # the fields sim.dataset reads
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", str(root), "--out", str(out), "--config", "tiny", "--steps", "2",
                              "--batch-size", "4", "--save-every", "1", "--log-every", "1", "--no-progress"])
    assert args.func(args) == 0
    policy = VLAPolicy.load(out / "policy")
    q01 = np.quantile(np.concatenate([np.load(p)["actions"] for p in sorted(root.glob("*/*.npz"))]), 0.01, axis=0)
    np.testing.assert_allclose(policy.action_grid.q_low, q01)  # the grid was fitted on the dataset's actions
    assert policy.config.chunk_len == 4 and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    md = policy.metadata()  # the camera model the policy was trained with is served as metadata
    assert md["uses_depth"] and md["intrinsics"] == {"corner": K[0].tolist()}


class _WithPrivileged:
    """SyntheticDataset samples of two tasks (even / odd rows) plus 9 privileged targets that are a function of the
    image (mean colour of three horizontal bands) and a per-task offset, so a policy can regress them from pixels
    and the instruction."""

    def __init__(self, base: SyntheticDataset):
        self.base, self.cameras = base, base.cameras

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = dict(self.base[i])
        bands = s["rgb"][0, :30].float().reshape(3, 10, -1, 3).mean(dim=(1, 2)) / 255.0  # (3 bands, 3 colours)
        s["task_id"] = i % 2
        s["privileged"] = bands.flatten() + 3.0 * (i % 2)
        return s


def _smooth_l1(x):
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x**2, a - 0.5).mean()


def test_privileged_targets_loss_matches_hand_computation_and_is_learned(tmp_path):
    from vla.train import compute_loss

    ds = _WithPrivileged(SyntheticDataset(16, seed=0))
    targets = np.stack([ds[i]["privileged"].numpy() for i in range(len(ds))]).astype(np.float64)
    task = np.arange(len(ds)) % 2
    tc = TrainConfig(steps=100, batch_size=16, lr=3e-3, warmup_steps=10, save_every=1000, log_every=10,
                     progress=False, augment=False, privileged_weight=0.5)
    train(PolicyConfig.tiny(privileged_dim=9), ds, tmp_path, tc, resume=False)
    policy = VLAPolicy.load(tmp_path / "policy")
    s = policy.stats["privileged"]  # per-task means, pooled within-task std (the 3.0 offset is not variance)
    means = {t: targets[task == t].mean(0) for t in (0, 1)}
    np.testing.assert_allclose(s["task_mean"]["0"], means[0], rtol=1e-5)
    np.testing.assert_allclose(s["task_mean"]["1"], means[1], rtol=1e-5)
    within = np.sqrt(((targets - np.stack([means[t] for t in task])) ** 2).mean(0))
    np.testing.assert_allclose(s["std"], np.maximum(within, 1e-3), rtol=1e-4)
    assert max(s["std"]) < 0.1 < targets.std(0).min()
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["privileged_loss"] < recs[0]["privileged_loss"] / 3, (recs[0], recs[-1])

    # the loss is CE + weight x smooth-L1 of the readout on the standardised targets
    b = collate([ds[i] for i in range(len(ds))])
    b["tokens"] = policy.action_grid.encode(b["actions"])
    with torch.no_grad():
        total, rec = compute_loss(policy, policy, b, world=1, privileged_weight=0.5)
        _, pred = policy(b["rgb"], policy.normalize_state(b["state"]), b["instruction"], b["depth"],
                         b["intrinsics"], privileged=True)
    z = (b["privileged"].numpy() - np.stack([means[t] for t in task])) / np.array(s["std"])
    hand = _smooth_l1(pred.numpy().astype(np.float64) - z)
    assert rec["privileged_loss"] == pytest.approx(hand, rel=1e-4)
    assert float(total) == pytest.approx(rec["loss"] + 0.5 * hand, rel=1e-4)

    # the readout is training-only: actions do not depend on its weights
    obs = {"rgb": b["rgb"], "depth": b["depth"], "intrinsics": b["intrinsics"], "state": b["state"],
           "instruction": b["instruction"]}
    before = policy.predict_tokens(obs)
    with torch.no_grad():
        policy.privileged_head.weight.normal_()
    assert torch.equal(policy.predict_tokens(obs), before)


def test_privileged_dim_without_targets_is_refused(tmp_path):
    from vla.errors import UserError

    tc = TrainConfig(steps=1, batch_size=4, progress=False)
    with pytest.raises(UserError, match=r"privileged_dim=9 but the dataset's samples have no privileged targets"):
        train(PolicyConfig.tiny(privileged_dim=9), SyntheticDataset(8), tmp_path, tc, resume=False)
