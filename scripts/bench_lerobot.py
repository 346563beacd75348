"""Benchmark: training from a LeRobot dataset (MP4 video) against our npz layout, batch 32, on this machine.

    .venv/bin/vla collect --tasks reach,push,drawer-close,door-open --episodes 3 --out /tmp/bench_npz
    .venv/bin/python scripts/bench_lerobot.py --npz /tmp/bench_npz              # + --decoders (below)

1. exports the npz folder to LeRobot v3.0 (`--codec`, default av1: LeRobot's own default) in a temp folder;
2. reading: samples/s of EpisodeDataset + collate at batch 32 in random order (as training draws them), one
   process, for each source;
3. training: `vla.train.train` with the default policy config at batch 32 on each source, seconds per step after
   the first; the share of a step spent reading MP4 = reading time per batch / step time, in wall time and in
   CPU time of this process (the latter holds when other jobs share the cores);
4. `--decoders`: ms per random frame of one MP4, PyAV (what sim.lerobot.video uses) against torchcodec where it
   imports (it needs FFmpeg's shared libraries on the system and a torch-matched wheel).
Prints JSON and a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def read_rate(ds, batches: int, batch: int, seed: int = 0) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process) of ds[i] + collate over `batches` random
    batches, after one warm-up batch. CPU time is what the reading costs whatever else shares the cores."""
    from vla.policy.data import collate

    g = np.random.default_rng(seed)
    collate([ds[int(i)] for i in g.integers(0, len(ds), batch)])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        collate([ds[int(i)] for i in g.integers(0, len(ds), batch)])
    return batches * batch / (time.perf_counter() - t0), batches * batch / (time.process_time() - c0)


def step_time(ds, steps: int, batch: int, out: Path) -> tuple[float, float]:
    """Median (wall, CPU) seconds per training step (default config, fp32, CPU), the first step left out."""
    from vla.policy.config import PolicyConfig
    from vla.train import TrainConfig, train

    stamps = []
    tc = TrainConfig(steps=steps + 1, batch_size=batch, save_every=10**6, log_every=10**6, progress=False,
                     device="cpu", warmup_steps=0)
    train(PolicyConfig.default(), ds, out, tc, resume=False,
          on_step=lambda s, r: stamps.append((time.perf_counter(), time.process_time())))
    d = np.diff(np.array(stamps), axis=0)
    return float(np.median(d[:, 0])), float(np.median(d[:, 1]))


def decoders(video: Path, frames: int, n: int = 300, repeats: int = 3) -> dict[str, float]:
    """CPU ms per random frame (median over `repeats` runs of n): PyAV through our cache, torchcodec if present."""
    from sim.lerobot.video import DecoderCache

    fps = 80.0
    out: dict[str, list[float]] = {}
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        idx = rng.integers(0, frames, n)
        cache = DecoderCache()
        cache.frames(video, [0.0])
        t0 = time.process_time()
        for i in idx:
            cache.frames(video, [i / fps])
        out.setdefault("pyav", []).append((time.process_time() - t0) / n * 1e3)
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError:
            continue
        for mode in ("exact", "approximate"):
            d = VideoDecoder(str(video), seek_mode=mode, num_ffmpeg_threads=1)
            d.get_frames_played_at([0.0])
            t0 = time.process_time()
            for i in idx:
                d.get_frames_played_at([i / fps]).data.permute(0, 2, 3, 1).numpy()
            out.setdefault(f"torchcodec-{mode}", []).append((time.process_time() - t0) / n * 1e3)
    return {k: round(float(np.median(v)), 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npz", required=True, help="a `vla collect` folder")
    ap.add_argument("--codec", default="av1", choices=["av1", "h264", "lossless"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--read-batches", type=int, default=20)
    ap.add_argument("--steps", type=int, default=6, help="training steps per source (0: skip training)")
    ap.add_argument("--decoders", action="store_true", help="also compare video decoders (PyAV, torchcodec)")
    args = ap.parse_args()

    from sim.dataset import EpisodeDataset
    from sim.lerobot.writer import export_lerobot

    torch.manual_seed(0)
    res: dict = {"torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        lr = Path(tmp) / "lerobot"
        t0 = time.perf_counter()
        info = export_lerobot(args.npz, lr, codec=args.codec, progress=False)
        res["export_s"] = round(time.perf_counter() - t0, 2)
        res["frames"] = info["total_frames"]
        res["image_size"] = info["features"][next(k for k in info["features"] if k.startswith("observation.images."))][
            "shape"][:2]
        from vla.policy.config import PolicyConfig

        T = PolicyConfig.default().chunk_len
        sources = {"npz": EpisodeDataset(args.npz, split="all", chunk_len=T),
                   "mp4": EpisodeDataset(lr, split="all", chunk_len=T)}
        for name, ds in sources.items():
            wall, cpu = read_rate(ds, args.read_batches, args.batch)
            res[f"read_{name}_samples_per_s"], res[f"read_{name}_samples_per_cpu_s"] = round(wall, 1), round(cpu, 1)
        if args.steps:
            for name, ds in sources.items():
                wall, cpu = step_time(ds, args.steps, args.batch, Path(tmp) / f"run_{name}")
                res[f"step_{name}_s"], res[f"step_{name}_cpu_s"] = round(wall, 3), round(cpu, 3)
                res[f"train_{name}_samples_per_s"] = round(args.batch / wall, 1)
            res["mp4_read_share_of_step"] = round(args.batch / res["read_mp4_samples_per_s"] / res["step_mp4_s"], 4)
            res["mp4_read_share_of_step_cpu"] = round(
                args.batch / res["read_mp4_samples_per_cpu_s"] / res["step_mp4_cpu_s"], 4)
        if args.decoders:
            video = next(lr.glob("videos/*/chunk-000/file-000.mp4"))
            res["decoder_ms_per_frame"] = decoders(video, info["total_frames"])
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    if args.steps:
        print(f"| {res['image_size'][0]} px, {args.codec} | {args.batch} | {res['read_npz_samples_per_s']} | "
              f"{res['read_mp4_samples_per_s']} | {res['train_npz_samples_per_s']} | {res['train_mp4_samples_per_s']}"
              f" | {100 * res['mp4_read_share_of_step']:.1f}% | {100 * res['mp4_read_share_of_step_cpu']:.1f}% |")


if __name__ == "__main__":
    main()
