"""`vla train`: behaviour cloning of the VLA policy on an episode dataset (`vla collect` output).

A run killed mid-way resumes from OUT/checkpoint when started again with the same command. Multi-GPU /
multi-node: `torchrun --nproc_per_node N -m vla.cli train ...` (DDP; gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="train the VLA policy (behaviour cloning over action-grid tokens)",
                       description=__doc__)
    p.add_argument("--data", required=True,
                   help="episode dataset folder (vla collect), several joined by commas (expert + noise + DAgger "
                        "rounds train as one), a LeRobot dataset folder (v3.0 / v2.1), or synthetic:N for N random "
                        "samples (smoke test)")
    p.add_argument("--features", default=None, metavar="MAP",
                   help="LeRobot datasets: which features feed the policy, e.g. cameras=observation.images.top,"
                        "state=observation.state,action=action (defaults: observation.images.*, observation.state, "
                        "action, the task as instruction)")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, policy/, metrics.jsonl, loss.png")
    p.add_argument("--config", default="default", help="tiny | default | path to a policy config JSON")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="continue from this trained policy (its config, action grid and statistics; new optimiser): "
                        "DAgger rounds and fine-tuning")
    p.add_argument("--perception-from", default=None, metavar="POLICY",
                   help="start the keypoint encoder and readout from this trained keypoint policy (a second stage: "
                        "with perception_trainable false and action_head mlp, training runs on cached position "
                        "estimates, OUT/positions.safetensors)")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (default 10000)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default 32)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-4)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None, help="checkpoint interval in steps (default 500)")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default 0)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--privileged-weight", type=float, default=None,
                   help="weight of the privileged-target loss for configs with privileged_dim > 0 (default 1)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from vla.errors import UserError
    from vla.policy.config import PolicyConfig
    from vla.train import train, train_config_from_args

    config = PolicyConfig.resolve(args.config)
    if args.init is not None:
        from vla.policy.checkpoint import load_config

        config = load_config(args.init)
    tc = train_config_from_args(args)
    if args.data.startswith("synthetic:"):
        from vla.clip import load_clip
        from vla.policy.data import SyntheticDataset

        try:
            n = int(args.data.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--data {args.data!r}: expected synthetic:N with N an int") from None
        size = config.image_size or load_clip(config.clip_model).image_size  # the CLIP input size
        dataset = SyntheticDataset(n, cameras=config.cameras, image_size=tuple(size), chunk_len=config.chunk_len,
                                   action_dim=config.action_dim, state_dim=config.state_dim)
    else:
        from sim.dataset import EpisodeDataset
        from sim.lerobot import open_lerobot

        try:
            data = open_lerobot(args.data, args.features, config)  # a LeRobot folder -> its source, else the path
            dataset = EpisodeDataset(data, split="train", chunk_len=config.chunk_len, cameras=config.cameras)
        except ValueError as e:
            raise UserError(f"--data {args.data}: {e}") from None
    if len(dataset) == 0:
        raise UserError(f"--data {args.data}: no training samples")
    summary = train(config, dataset, args.out, tc, resume=args.resume, init=args.init)
    print(json.dumps(summary))
    return 0
