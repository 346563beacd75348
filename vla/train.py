"""Behaviour cloning for the VLA policy: cross-entropy over action-grid tokens, resumable, DDP-ready.

    vla train --data data/mt10 --out out/train --config tiny --steps 2000 --batch-size 32
    torchrun --nproc_per_node 2 -m vla.cli train --data data/mt10 --out out/train   # DDP (nccl or gloo)

OUT/checkpoint/   latest training checkpoint (policy files + train_state.pt: optimizer, step, RNG), replaced
                  atomically every --save-every steps; a killed run restarted with the same command resumes
                  there (at most one interval lost).
OUT/policy/       the final policy (`VLAPolicy.load`); OUT/metrics.jsonl one JSON line per logged step;
OUT/loss.png      the loss curve.

Determinism: the global batch of step s is a fixed function of (seed, s) (one permutation of the dataset per
epoch) and so is the augmentation, so a resumed run sees the very batches the uninterrupted one would have
seen; each DDP rank takes its slice of the global batch and the loss is normalised by the global token count,
so N processes compute the gradient of one process on the same global batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from vla.errors import UserError
from vla.files import atomic_path, read_jsonl, truncate_jsonl, write_json_atomic
from vla.policy.action_grid import ActionGrid
from vla.policy.checkpoint import recover_dir, write_dir_atomic, write_policy_files
from vla.policy.config import PolicyConfig
from vla.policy.data import (
    PolicyDataset,
    PositionCache,
    augment,
    collate,
    dataset_actions,
    dataset_camera_poses,
    dataset_instructions,
    dataset_privileged,
    dataset_states,
    dataset_task_ids,
)
from vla.policy.keypoints import keypoint_loss

log = logging.getLogger(__name__)
# Metres: the smallest std an MLP head divides a position input by before it has its estimates' statistics. A
# target absent from a task (MT10 has no second object) has a constant true position, and that std (floored at
# 1e-3 in privileged_stats) scaled the readout's estimate of it ~1000-fold in M1-M3 (docs/policy_experiments.md).
POSITION_STD_FLOOR = 0.05


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 32  # global: split evenly over DDP ranks
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp16) | fp32 | bf16 | fp16; CPU: fp32
    workers: int = 0
    augment: bool = True
    shift: float = 0.06  # random shift, fraction of the image size
    jitter: float = 0.2  # brightness/contrast/saturation amplitude
    privileged_weight: float = 1.0  # weight of the privileged-target loss (policies with privileged_dim > 0)
    # A trained keypoint policy whose encoder and readout a fresh policy starts from (a second stage, usually
    # with perception_trainable false and the MLP head: then training runs on cached position estimates).
    perception_from: str | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.workers < 0:
            raise UserError(f"warmup_steps and workers must be >= 0, got {self.warmup_steps}, {self.workers}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.grad_clip > 0 and self.weight_decay >= 0):
            raise UserError(f"need lr > 0, 0 <= min_lr_ratio <= 1, grad_clip > 0, weight_decay >= 0; got lr="
                            f"{self.lr}, min_lr_ratio={self.min_lr_ratio}, grad_clip={self.grad_clip}, "
                            f"weight_decay={self.weight_decay}")
        if not (isinstance(self.privileged_weight, (int, float)) and self.privileged_weight >= 0):
            raise UserError(f"privileged_weight must be a number >= 0, got {self.privileged_weight!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr down to min_lr_ratio * lr at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    span = max(tc.steps - tc.warmup_steps, 1)
    t = min((step - tc.warmup_steps) / span, 1.0)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def global_batch_indices(step: int, n: int, batch: int, seed: int) -> list[int]:
    """Dataset indices of step `step`'s global batch: consecutive slices of a per-epoch permutation."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, i = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        take = min(batch - len(out), n - i)
        out += perm[i : i + take].tolist()
        pos += take
    return out


class StepBatchSampler(torch.utils.data.Sampler):
    """This rank's slice of every global batch from step `start` to `stop` (a batch_sampler for DataLoader)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, start: int, stop: int):
        super().__init__()
        if global_batch % world:
            raise UserError(f"--batch-size {global_batch} must be a multiple of the number of processes {world}")
        self.n, self.gb, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.start, self.stop, self.local = start, stop, global_batch // world

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.stop):
            idx = global_batch_indices(step, self.n, self.gb, self.seed)
            yield idx[self.rank * self.local : (self.rank + 1) * self.local]


# --- distributed / device -------------------------------------------------------------------------------
def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl on GPUs,
    gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    from vla.clip import check_device

    dev = check_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def _autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    if dev.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# --- checkpoints ----------------------------------------------------------------------------------------
def _train_state(optimizer, step: int) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return {"optimizer": optimizer.state_dict(), "step": step, "rng": rng}


def save_training_checkpoint(folder: Path, policy, optimizer, step: int, tc: TrainConfig) -> None:
    def write(tmp: Path) -> None:
        write_policy_files(policy, tmp)
        torch.save(_train_state(optimizer, step), tmp / "train_state.pt")
        write_json_atomic(tmp / "train_config.json", asdict(tc))

    write_dir_atomic(folder, write)


def load_training_checkpoint(folder: Path, config: PolicyConfig | None, device: torch.device):
    """(policy, optimizer state, step) from OUT/checkpoint; refuses a checkpoint of another architecture
    (config None: a run started from a trained policy, whose own config the checkpoint carries)."""
    from vla.policy.model import VLAPolicy

    saved = json.loads((folder / "config.json").read_text())
    want = config.to_dict() if config is not None else saved
    ignore = {"model_version", "image_size", "clip_pretrained", "extra"}
    diff = sorted(k for k in set(saved) | set(want) if k not in ignore and saved.get(k) != want.get(k))
    if diff:
        raise UserError(f"{folder} was written with another policy config (fields {diff} differ): use another "
                        "--out, the same --config, or --no-resume to start over")
    policy = VLAPolicy.load(folder, device=device)
    state = torch.load(folder / "train_state.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return policy, state["optimizer"], int(state["step"])


def make_optimizer(policy, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (tensors with < 2 dims)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95))


def build_policy(config: PolicyConfig, dataset: PolicyDataset, tc: TrainConfig, device: torch.device):
    """A fresh policy whose action grid and state statistics are fitted on the dataset."""
    from vla.policy.model import VLAPolicy, default_stats

    if tuple(dataset.cameras) != tuple(config.cameras):
        raise UserError(f"the dataset's cameras {list(dataset.cameras)} differ from the config's cameras "
                        f"{list(config.cameras)}")
    grid = ActionGrid.fit(dataset_actions(dataset), config.action_layout, bins=config.grid_bins,
                          min_sigma=config.grid_min_sigma)
    states = dataset_states(dataset)
    stats = default_stats(config, grid)
    stats["state"] = {"mean": states.mean(0).tolist(), "std": np.maximum(states.std(0), 1e-3).tolist()}
    first = dataset[0] if len(dataset) else {}
    if config.privileged_dim:
        have = np.asarray(first["privileged"]).shape if first.get("privileged") is not None else None
        if have != (config.privileged_dim,):
            raise UserError(f"privileged_dim={config.privileged_dim} but the dataset's samples have "
                            f"{'no privileged targets' if have is None else f'privileged of shape {have}'}: "
                            "collect the data with this version (episodes record raw_obs) or set privileged_dim "
                            f"to {0 if have is None else have[0]}")
        stats["privileged"] = privileged_stats(dataset_privileged(dataset), dataset_task_ids(dataset))
        if config.action_head == "mlp":  # its position inputs; replaced by the estimates' own on a position cache
            ps = stats["privileged"]
            ps["estimate_mean"] = ps["mean"]
            ps["estimate_std"] = [max(v, POSITION_STD_FLOOR) for v in ps["global_std"]]
    poses = dataset_camera_poses(dataset)
    if poses is not None:  # the keypoint loss projects with them; the readout starts from them
        stats["camera_poses"] = {cam: poses[v].tolist() for v, cam in enumerate(config.cameras)}
    elif config.keypoints and config.privileged_dim:
        log.warning("the dataset records no camera poses: the keypoints learn from the position readout alone, "
                    "without the heatmap loss (slow; docs/policy_experiments.md rows L3-L5)")
    if config.mlp_instruction == "match":  # the MLP head matches new wording to these (vla.policy.instructions)
        tasks = dataset_instructions(dataset)
        stats["instructions"] = {"texts": sorted(tasks), "groups": [tasks[t] for t in sorted(tasks)]}
    if first.get("intrinsics") is not None:  # served as metadata: the camera model the policy was trained with
        K = np.asarray(first["intrinsics"], dtype=np.float64)  # (V, 3, 3) for the dataset's image size
        stats["intrinsics"] = {cam: K[v].tolist() for v, cam in enumerate(config.cameras)}
    policy = VLAPolicy.from_config(config, grid, seed=tc.seed, stats=stats, device=device)
    if tc.perception_from is not None:
        copy_perception(policy, tc.perception_from)
    return policy


def copy_perception(policy, source: str | os.PathLike) -> None:
    """Load the keypoint encoder and readout of the trained policy at `source` into `policy` (same keypoints,
    channels, targets and cameras), e.g. to train a new action head on perception trained before."""
    from vla.policy.checkpoint import load_policy

    cfg = policy.config
    if not (cfg.keypoints and cfg.privileged_dim):
        raise UserError(f"--perception-from {source}: the config has no keypoint readout to load into "
                        f"(keypoints={cfg.keypoints}, privileged_dim={cfg.privileged_dim})")
    src = load_policy(source, policy.device)
    fields = ("keypoints", "keypoint_channels", "privileged_dim", "cameras")
    diff = {f: (getattr(src.config, f), getattr(cfg, f)) for f in fields if getattr(src.config, f) != getattr(cfg, f)}
    if diff:
        raise UserError(f"--perception-from {source}: its perception does not fit this config: "
                        + ", ".join(f"{f} {a!r} there, {b!r} here" for f, (a, b) in diff.items()))
    policy.keypoint_encoder.load_state_dict(src.keypoint_encoder.state_dict())
    policy.privileged_head.load_state_dict(src.privileged_head.state_dict())


def privileged_stats(values: np.ndarray, task_ids: np.ndarray) -> dict[str, Any]:
    """Per-task means and the pooled within-task std of the privileged targets. Standardising with the global
    std would let a per-task constant (what the instruction already says) explain most of the variance and leave
    the within-task position -- what the camera must resolve -- a tiny share of the loss."""
    means = {int(t): values[task_ids == t].mean(0) for t in np.unique(task_ids)}
    resid = values - np.stack([means[int(t)] for t in task_ids])
    return {"task_mean": {str(t): m.tolist() for t, m in means.items()},
            "std": np.maximum(np.sqrt((resid ** 2).mean(0)), 1e-3).tolist(),
            # over all tasks: how the MLP head standardises the position estimates it reads
            "mean": values.mean(0).tolist(), "global_std": np.maximum(values.std(0), 1e-3).tolist()}


# --- one step -------------------------------------------------------------------------------------------
def compute_loss(model, policy, batch: dict[str, Any], world: int,
                 privileged_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """CE summed over valid (step, group) tokens / global valid count (x world: DDP averages gradients; for
    action_output "continuous" the squared error in the grid's normalised space, a mean per valid step), plus,
    for a policy with privileged_dim, privileged_weight x the smooth-L1 error of its privileged readout on the
    targets standardised per task (`privileged_stats`), a mean over the rows (DDP's gradient average makes it
    the global batch's mean). Keypoint policies trained on data with camera poses use `keypoint_loss` instead
    (heatmap cross-entropy at each target's projection + the readout's error)."""
    inputs = {"rgb": batch.get("rgb"), "state": policy.normalize_state(batch["state"]),
              "instructions": batch["instruction"], "depth": batch.get("depth"),
              "intrinsics": batch.get("intrinsics")}
    aux, kp_rec = None, {}
    if "positions" in batch:  # a PositionCache: frozen perception, only the action head learns
        logits = model(**inputs, positions=batch["positions"])
    elif policy.config.privileged_dim and policy.config.perception_trainable:
        if batch.get("privileged") is None:
            raise UserError(f"the policy regresses privileged_dim={policy.config.privileged_dim} targets but this "
                            "batch has none: every episode folder must record raw_obs (collect with this version)")
        use_maps = policy.privileged_in_units and "camera_poses" in policy.stats and batch.get("depth") is not None
        logits, pred, *maps = model(**inputs, privileged=True, heatmaps=use_maps)
        s = policy.stats["privileged"]
        ids = batch.get("task_id")
        ids = ids.tolist() if ids is not None else [0] * pred.shape[0]
        unknown = sorted({t for t in ids if str(t) not in s["task_mean"]})
        if unknown:
            raise UserError(f"task id(s) {unknown} have no privileged statistics (the policy's are for "
                            f"{sorted(int(t) for t in s['task_mean'])}): train from scratch on data with them")
        target = batch["privileged"].float()
        if maps:  # keypoint policies with a known camera pose: supervise each keypoint's map and its position
            n, cam = policy.config.privileged_dim // 3, policy.config.cameras[0]
            aux, kp_rec = keypoint_loss(pred, maps[0][:, 0, :n], target.reshape(-1, n, 3),
                                        torch.tensor(policy.stats["camera_poses"][cam]), batch["intrinsics"][:, 0],
                                        tuple(batch["depth"].shape[-2:]))
        else:  # standardised per task
            mean = torch.tensor([s["task_mean"][str(t)] for t in ids], dtype=torch.float32, device=pred.device)
            std = torch.tensor(s["std"], dtype=torch.float32, device=pred.device)
            if policy.privileged_in_units:
                pred = (pred.float() - mean) / std
            aux = F.smooth_l1_loss(pred.float(), (target - mean) / std)
    else:
        logits = model(**inputs)
    tokens, mask = batch["tokens"], batch["action_mask"]  # (B, T, G), (B, T)
    loss_sum = torch.zeros((), device=tokens.device)
    correct = torch.zeros((), device=tokens.device)
    n_tokens = mask.sum().float() * tokens.shape[-1]
    if policy.config.action_output == "continuous":  # squared error in the grid's [-1, 1] space, per valid step
        grid = policy.action_grid
        target = grid.normalize(batch["actions"].to(tokens.device)).float()
        se = ((logits.float() - target) ** 2).mean(-1)  # (B, T): the mean over action dimensions
        loss_sum, n_loss = (se * mask).sum(), mask.sum().float()
        with torch.no_grad():  # token accuracy: the regressed action falls in the expert's bin
            correct = ((grid.encode(grid.unnormalize(logits.detach().double())) == tokens) & mask[..., None]).sum()
    else:  # cross-entropy per valid (step, group) token
        for g, lg in enumerate(logits):
            ce = F.cross_entropy(lg.float().flatten(0, 1), tokens[..., g].flatten(), reduction="none")
            loss_sum = loss_sum + (ce.view(mask.shape) * mask).sum()
            correct = correct + ((lg.argmax(-1) == tokens[..., g]) & mask).sum()
        n_loss = n_tokens
    totals = torch.stack([loss_sum.detach(), correct.float(), n_loss, n_tokens])
    if world > 1:
        dist.all_reduce(totals)
    count = totals[2].clamp_min(1)
    loss = loss_sum / count * world
    rec = {"loss": float(totals[0] / count), "token_acc": float(totals[1] / totals[3].clamp_min(1))}
    if aux is not None:
        loss = loss + privileged_weight * aux
        rec["privileged_loss"] = float(aux.detach())  # this rank's rows
        rec.update(kp_rec)
    return loss, rec


def _to_device(batch: dict[str, Any], policy, tc: TrainConfig, step: int, rank: int, dev) -> dict[str, Any]:
    batch = dict(batch)
    batch["tokens"] = policy.action_grid.encode(batch["actions"])  # (B, T, G) int64
    if tc.augment and "rgb" in batch:  # cached positions have no images to augment
        g = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        B = batch["rgb"].shape[0]
        batch = augment(batch, g, shift=tc.shift, jitter=tc.jitter, first=rank * B, total=tc.batch_size)
    return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- the loop -------------------------------------------------------------------------------------------
def init_policy(path: str | os.PathLike, dataset: PolicyDataset, device: torch.device):
    """A trained policy to continue from (DAgger rounds, fine-tuning): its weights, action grid and statistics
    are kept, so its tokens mean what they meant; the dataset must have its cameras."""
    from vla.policy.checkpoint import load_policy

    policy = load_policy(path, device)
    if tuple(dataset.cameras) != tuple(policy.config.cameras):
        raise UserError(f"--init {path}: the policy was trained on cameras {list(policy.config.cameras)}, the "
                        f"dataset has {list(dataset.cameras)}")
    return policy


def train(config: PolicyConfig, dataset: PolicyDataset, out_dir: str | os.PathLike, tc: TrainConfig,
          resume: bool = True, on_step=None, init: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or resume) and write OUT/policy; returns a summary. `on_step(step, record)` is called after
    every step (rank 0), e.g. to stop early. `init`: start from this trained policy (its config, grid and
    statistics replace `config`) instead of a fresh one; a resumable checkpoint in OUT still wins."""
    from tqdm import tqdm

    rank, world, dev = setup_distributed(tc.device)
    out = Path(out_dir)
    ckpt = out / "checkpoint"
    found = recover_dir(ckpt) if resume else None
    if found is not None:
        policy, opt_state, start = load_training_checkpoint(found, config if init is None else None, dev)
        log.info("resuming from %s at step %d", found, start)
    elif init is not None:
        policy, opt_state, start = init_policy(init, dataset, dev), None, 0
        log.info("starting from the trained policy %s", init)
    else:
        policy, opt_state, start = build_policy(config, dataset, tc, dev), None, 0
    if policy.config.action_head == "mlp" and not policy.config.perception_trainable:
        dataset = PositionCache(dataset, policy, out / "positions.safetensors", progress=tc.progress and rank == 0)
        if found is None and init is None:  # a new head: standardise what it reads, the cached estimates
            policy.set_position_stats(dataset.arrays["positions"])
    policy.train()
    optimizer = make_optimizer(policy, tc)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    model = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)
    amp = _autocast_dtype(tc.precision, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    sampler = StepBatchSampler(len(dataset), tc.batch_size, rank, world, tc.seed, start, tc.steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tc.workers,
                                         collate_fn=collate, pin_memory=dev.type == "cuda")
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(metrics_path, start)
    bar = tqdm(total=tc.steps, initial=start, disable=rank != 0 or not tc.progress, desc="train", unit="step")
    t0, rec, step = time.perf_counter(), {}, start
    for step, batch in zip(range(start, tc.steps), loader):
        lr = lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _to_device(batch, policy, tc, step, rank, dev)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, rec = compute_loss(model, policy, batch, world, tc.privileged_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), tc.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        done = step + 1
        rec = {"step": done, **rec, "lr": lr, "grad_norm": float(gnorm),
               "samples_per_s": tc.batch_size * (done - start) / (time.perf_counter() - t0)}
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['token_acc']:.3f}")
        if rank == 0 and (done % tc.log_every == 0 or done == tc.steps):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done % tc.save_every == 0 or done == tc.steps:
            if rank == 0:
                save_training_checkpoint(ckpt, policy, optimizer, done, tc)
                plot_losses(metrics_path, out / "loss.png", action_loss_label(policy.config))
            if world > 1:
                dist.barrier()
        if on_step is not None and rank == 0:
            on_step(done, rec)
    bar.close()
    if rank == 0:
        policy.config.model_version = f"trained-{tc.steps}steps"
        policy.eval().save(out / "policy")
        plot_losses(metrics_path, out / "loss.png", action_loss_label(policy.config))
    return {"steps": tc.steps, "start_step": start, "world_size": world, "param_count": policy.param_count,
            "last": rec, "out": str(out)}


def action_loss_label(config: PolicyConfig) -> str:
    return "loss (squared error / step)" if config.action_output == "continuous" else "loss (CE / token)"


def plot_losses(metrics_path: Path, png: Path, loss_label: str = "loss (CE / token)") -> None:
    """Loss and token accuracy against step (matplotlib Agg, written atomically)."""
    recs = read_jsonl(metrics_path)
    if not recs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in recs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in recs], label=loss_label)
    if any("privileged_loss" in r for r in recs):
        keypoints = any("heatmap_ce" in r for r in recs)
        ax.plot(steps, [r.get("privileged_loss", float("nan")) for r in recs], color="tab:green",
                label="keypoint loss (heatmap CE + readout)" if keypoints else "privileged targets (smooth L1)")
        ax.set_yscale("log")  # the auxiliary loss starts 10-100x above the action loss
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["token_acc"] for r in recs], color="tab:orange", label="token accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("token accuracy")
    fig.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def train_config_from_args(args) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in known and v is not None})
