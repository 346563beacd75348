"""Few-shot CoOp/CoCoOp training with the reference recipe (SGD 0.002, momentum 0.9, wd 5e-4, cosine, warm-up).

CLIP is frozen and needs no augmentation here, so image features are computed once and cached: an epoch costs
only the text tower (measured: 16-shot x 10 classes trains in seconds on 2 CPU cores with vla-tiny).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla.prompts.coop import PromptLearner


def default_epochs(shots: int) -> int:
    """CoOp's schedule: 50 epochs for 1 shot, 100 for 2-4, 200 for 8 and more."""
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def lr_at(epoch: int, epochs: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Constant warm-up, then cosine decay over all epochs (Dassl's ConstantWarmupScheduler + cosine)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))


def train_prompts(
    learner: PromptLearner,
    image_features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.002,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Train the context (and meta-net) on normalised image features (N, E) with labels (N,). Returns history."""
    torch.manual_seed(seed)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    device = learner.ctx.device
    feats, labels = image_features.to(device), labels.to(device)
    scale = learner.clip.logit_scale.detach()
    gen = torch.Generator().manual_seed(seed)
    history = []
    learner.train()
    bar = tqdm(range(epochs), desc="coop", unit="epoch", disable=not progress)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, epochs, lr)
        order = torch.randperm(len(feats), generator=gen).to(device)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            img, y = feats[idx], labels[idx]
            txt = F.normalize(learner.text_features(img if learner.meta_net is not None else None), dim=-1)
            logits = scale * (img @ txt.T if txt.ndim == 2 else torch.einsum("be,bce->bc", img, txt))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
            total += len(idx)
        history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], "loss": loss_sum / total,
                        "train_acc": correct / total})
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.2f}")
    learner.eval()
    return history
