"""Train the tiny policy on a synthetic dataset; run under torchrun to exercise DDP (gloo on CPU).

    torchrun --standalone --nproc_per_node 2 scripts/train_ddp_check.py OUT [STEPS] [BATCH]

tests/policy/test_train.py runs it with 2 processes and compares losses and weights with a 1-process run.
"""

import sys

import torch

from vla.policy.config import PolicyConfig
from vla.policy.data import SyntheticDataset
from vla.train import TrainConfig, train


def check_config(steps: int, batch: int) -> tuple[PolicyConfig, SyntheticDataset, TrainConfig]:
    cfg = PolicyConfig.tiny(grid_bins={"translation": [4, 8, 4]})
    ds = SyntheticDataset(12, seed=1)
    tc = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup_steps=1, save_every=steps, log_every=1,
                     progress=False, seed=2)
    return cfg, ds, tc


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    train(*check_config(steps, batch)[:2], out, check_config(steps, batch)[2], resume=False)
