"""Contrastive pre-training of a small CLIP on simulator frames and their captions (no internet, no weights).

    from vla.clip_pretrain import PretrainConfig, pretrain
    pretrain("data/mt10", "work/clip", PretrainConfig(model="vla-small", steps=600, batch_size=64))

Captions of a frame of task t: its training instruction paraphrases (sim.language, held-out ones never) and short
scene descriptions (`scene_captions`). A batch holds several frames of the same task, so the plain CLIP loss
(one positive per row) would push apart pairs that match: the targets are multi-positive instead, every
(image, caption) pair of the same task counts, each row's target spread evenly over them.

OUT/clip.safetensors   the open_clip state dict (`load_clip(model, "OUT/clip.safetensors")`)
OUT/checkpoint/        weights + optimiser + step, replaced atomically every `save_every` steps (resume)
OUT/metrics.jsonl, OUT/clip_loss.png
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sim import language
from vla.errors import UserError
from vla.files import (
    atomic_path,
    read_jsonl,
    save_safetensors_atomic,
    truncate_jsonl,
    write_json_atomic,
)

log = logging.getLogger(__name__)

# What the first frame of each MT10 task shows, in words: the scene classes of `vla classify` and captions.
SCENE_CLASSES: dict[str, str] = {
    "reach-v3": "reaching for a target",
    "push-v3": "pushing a puck",
    "pick-place-v3": "picking up a puck",
    "door-open-v3": "opening a door",
    "drawer-open-v3": "opening a drawer",
    "drawer-close-v3": "closing a drawer",
    "button-press-topdown-v3": "pressing a button",
    "peg-insert-side-v3": "inserting a peg",
    "window-open-v3": "opening a window",
    "window-close-v3": "closing a window",
}
SCENE_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "reach-v3": ("a robot arm over a table with a small target point", "an empty table and a robot gripper"),
    "push-v3": ("a puck on the table and a green goal", "a robot arm behind a small puck"),
    "pick-place-v3": ("a puck on the table and a goal in the air", "a robot gripper above a puck"),
    "door-open-v3": ("a closed cabinet door with a handle", "a robot arm next to a shut door"),
    "drawer-open-v3": ("a closed drawer on the table", "a robot arm in front of a shut drawer"),
    "drawer-close-v3": ("an open drawer on the table", "a drawer pulled out toward the robot"),
    "button-press-topdown-v3": ("a button box on the table seen from above", "a red button under the gripper"),
    "peg-insert-side-v3": ("a peg lying next to a box with a hole", "a box with a hole in its side"),
    "window-open-v3": ("a closed sliding window", "a window frame with the sash shut"),
    "window-close-v3": ("an open sliding window", "a window frame with the sash open"),
}


def scene_captions(task: str) -> list[str]:
    """Captions a frame of `task` may get: training paraphrases + scene descriptions + its scene class."""
    caps = list(language.paraphrases(task, "train"))
    if task in SCENE_DESCRIPTIONS:
        caps += list(SCENE_DESCRIPTIONS[task])
        caps.append(f"a robot {SCENE_CLASSES[task]}")
    else:
        caps.append(f"a robot arm at a table, about to {caps[0]}")
    return caps


@dataclass
class PretrainConfig:
    model: str = "vla-small"
    steps: int = 600
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    shift: float = 0.06  # augmentation: random shift (fraction of the image) and colour jitter
    jitter: float = 0.2
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"clip pretrain: {name} must be an int >= 1, got {v!r}")
        if self.batch_size < 2:
            raise UserError(f"clip pretrain: batch_size={self.batch_size} must be >= 2 (contrastive pairs)")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise UserError(f"clip pretrain: need lr > 0 and warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")


class FrameCaptions:
    """(frame, caption, task id) samples drawn from an episode dataset; the draw of step s depends on (seed, s)
    only, so a resumed run sees the batches an uninterrupted one would have seen."""

    def __init__(self, root: str | os.PathLike):
        from sim.dataset import NpzEpisodeSource

        self.source = NpzEpisodeSource(root)
        self.eps = self.source.episodes()
        if not self.eps:
            raise UserError(f"{root}: no episodes to pre-train on")
        self.tasks = sorted({e["task"] for e in self.eps})
        self.captions = {t: scene_captions(t) for t in self.tasks}

    def batch(self, step: int, size: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """-> rgb (B, 1, H, W, 3) uint8 (first camera), captions (B,), task index (B,)."""
        rng = np.random.default_rng([seed, step])
        rgbs, caps, tids = [], [], []
        for e in rng.integers(len(self.eps), size=size):
            ep = self.eps[int(e)]
            t = int(rng.integers(ep["length"]))
            rgb, _ = self.source.frame(int(e), t, [0])
            rgbs.append(torch.from_numpy(np.ascontiguousarray(rgb)))
            options = self.captions[ep["task"]]
            caps.append(options[int(rng.integers(len(options)))])
            tids.append(self.tasks.index(ep["task"]))
        return torch.stack(rgbs), caps, torch.tensor(tids)


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, groups: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every (i, j) with groups[i] == groups[j] is a positive: cross-entropy against
    the row-normalised same-group matrix. img, txt (B, E) L2-normalised; groups (B,)."""
    logits = scale * img @ txt.t()  # (B, B)
    pos = (groups[:, None] == groups[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean()
                  - (target * F.log_softmax(logits.t(), 1)).sum(1).mean())


def _lr(step: int, pc: PretrainConfig) -> float:
    if step < pc.warmup_steps:
        return pc.lr * (step + 1) / pc.warmup_steps
    t = min((step - pc.warmup_steps) / max(pc.steps - pc.warmup_steps, 1), 1.0)
    return pc.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _images(clip, rgb: torch.Tensor, dev) -> torch.Tensor:
    """uint8 (B, 1, H, W, 3) -> normalised (B, 3, S, S) at the tower's input size."""
    v = clip.model.visual
    x = rgb[:, 0].permute(0, 3, 1, 2).float().to(dev)  # (B, 3, H, W)
    if tuple(x.shape[-2:]) != tuple(clip.image_size):
        x = F.interpolate(x, size=tuple(clip.image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(v.image_mean or (0.48145466, 0.4578275, 0.40821073), device=dev).view(1, 3, 1, 1)
    std = torch.tensor(v.image_std or (0.26862954, 0.26130258, 0.27577711), device=dev).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


def pretrain(data: str | os.PathLike, out_dir: str | os.PathLike, pc: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) and write OUT/clip.safetensors; returns a summary."""
    from tqdm import tqdm

    from vla.clip import check_device, load_clip
    from vla.policy.checkpoint import recover_dir, write_dir_atomic
    from vla.policy.data import augment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = check_device(pc.device)
    frames = FrameCaptions(data)
    ckpt = recover_dir(out / "checkpoint")
    clip = load_clip(pc.model, str(ckpt / "clip.safetensors") if ckpt else None, device=dev)
    model = clip.model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=pc.lr,
                            weight_decay=pc.weight_decay, betas=(0.9, 0.98))
    start = 0
    if ckpt is not None:
        state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("clip pretrain: resuming at step %d", start)
    metrics = out / "metrics.jsonl"
    truncate_jsonl(metrics, start)
    bar = tqdm(total=pc.steps, initial=start, desc="clip", unit="step", disable=not pc.progress)
    t0, rec = time.perf_counter(), {}
    for step in range(start, pc.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, pc)
        rgb, caps, tids = frames.batch(step, pc.batch_size, pc.seed)
        gen = torch.Generator().manual_seed(pc.seed * 1_000_003 + step)
        rgb = augment({"rgb": rgb}, gen, shift=pc.shift, jitter=pc.jitter)["rgb"]
        img = F.normalize(clip.encode_image(_images(clip, rgb, dev))[0], dim=-1)  # (B, E)
        txt = F.normalize(clip.encode_text_ids(clip.tokenize(caps).to(dev)).pooled, dim=-1)  # (B, E)
        loss = multi_positive_loss(img, txt, tids.to(dev), model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        rec = {"step": done, "loss": loss.item(), "lr": _lr(step, pc),
               "samples_per_s": pc.batch_size * (done - start) / (time.perf_counter() - t0)}
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if done % pc.log_every == 0 or done == pc.steps:
            with open(metrics, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if done % pc.save_every == 0 or done == pc.steps:
            def write(tmp: Path, step=done) -> None:
                save_safetensors_atomic(model.state_dict(), tmp / "clip.safetensors")
                torch.save({"optimizer": opt.state_dict(), "step": step}, tmp / "train_state.pt")
            write_dir_atomic(out / "checkpoint", write)
            plot_curve(metrics, out / "clip_loss.png")
    bar.close()
    model.eval()
    save_safetensors_atomic(model.state_dict(), out / "clip.safetensors", metadata={"model": pc.model})
    summary = {"model": pc.model, "steps": pc.steps, "start_step": start, "tasks": frames.tasks,
               "last": rec, "config": asdict(pc)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def plot_curve(metrics: Path, png: Path) -> None:
    """The contrastive loss against step, matplotlib Agg, written atomically."""
    recs = read_jsonl(metrics)
    if not recs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("CLIP contrastive loss")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
