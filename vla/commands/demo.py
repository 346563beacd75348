"""`vla demo`: the default model end to end, through the real server.

    vla demo                       # the committed default model (vla/assets/default)
    vla demo --checkpoint DIR      # any default-model directory (scripts/train_default.py --export DIR)

Starts `vla serve` on a free loopback port (its own process group), waits for health, evaluates the served
policy on a few MT10 tasks with held-out seeds and held-out paraphrases (`sim.evaluate` via `RemoteSimPolicy`,
one client: the latency is what one robot sees), prints a table with gRPC latency p50/p99, writes a GIF per
task and results.json under --out, classifies rendered held-out scenes (which task is shown) with the default
CLIP, templates versus the learned CoOp context, and stops the server; Ctrl-C stops it too.

Without a committed default model the demo says so and shows the classification-only demo (templates vs CoOp on
a generated colour-image folder with the tiny random CLIP tower).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_TASKS = "mt10"  # all ten tasks, one held-out episode each by default


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the demo: the default policy served over gRPC, evaluated in simulation",
                       description=__doc__)
    p.add_argument("--checkpoint", help="default-model directory (default: the committed vla/assets/default)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--tasks", default=DEMO_TASKS, help=f"tasks to evaluate (default {DEMO_TASKS})")
    p.add_argument("--episodes", type=int, default=1, help="held-out episodes per task (default 1)")
    p.add_argument("--max-steps", type=int, default=None, help="episode limit (default: the model's eval setting)")
    p.add_argument("--horizon", type=int, default=None, help="actions per chunk (default: the model's eval setting)")
    p.add_argument("--scenes", type=int, default=5, help="held-out scene renders per task to classify (default 5)")
    p.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for the server (default 120)")
    p.add_argument("--shots", type=int, default=4, help="classification-only fallback: CoOp shots per class")
    p.set_defaults(func=run)


def run(args) -> int:
    from vla.default_model import default_checkpoint
    from vla.errors import UserError

    if args.checkpoint is None:
        found = default_checkpoint()
        if found is None:
            print("vla demo: no default model is committed yet (vla/assets/default); showing the "
                  "classification-only demo (train one: python scripts/train_default.py --preset default)")
            return classification_only(args)
        args.checkpoint = str(found)
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        raise UserError(f"--checkpoint {ckpt}: not a policy checkpoint directory (no config.json)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the server is stopped on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with Server(ckpt, out / "server.log", args.server_timeout) as address:
        results = evaluate_served(args, ckpt, address, out)
    print(results_table(results))
    scenes = classify_scenes(args, ckpt, out) if (ckpt / "scene_context.safetensors").is_file() else None
    if scenes:
        results["scene_classification"] = scenes
        print(f"\n| prompts | scene top-1 ({scenes['images']} held-out renders, {scenes['classes']} classes) |")
        print(f"|---|---|\n| templates (openai, 80) | {scenes['templates']:.3f} |\n| CoOp (learned context) | "
              f"{scenes['coop']:.3f} |")
    from vla.files import write_json_atomic

    write_json_atomic(out / "results.json", results)
    print(f"\nresults: {out / 'results.json'}; GIFs: {out / 'videos'}")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class Server:
    """`vla serve --checkpoint DIR --port 0` in its own process group; the context value is HOST:PORT.
    Leaving the block (normally, by exception or Ctrl-C) sends SIGTERM to the group, then SIGKILL after 15 s."""

    def __init__(self, checkpoint: Path, log_path: Path, timeout: float):
        self.checkpoint, self.log_path, self.timeout = checkpoint, log_path, timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        from vla.errors import UserError

        self.tmp = tempfile.TemporaryDirectory(prefix="vla-demo-")
        ready = Path(self.tmp.name) / "port"
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "vla.cli", "serve", "--checkpoint", str(self.checkpoint), "--host",
               "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--grace-s", "2"]
        print(f"== starting {' '.join(cmd[1:])} (log: {self.log_path})", flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            end = time.monotonic() + self.timeout
            while not ready.exists():
                if self.proc.poll() is not None:
                    raise UserError(f"vla serve exited with code {self.proc.returncode} before it was ready: "
                                    f"{self.log_path.read_text().strip().splitlines()[-1:]}")
                if time.monotonic() > end:
                    raise UserError(f"vla serve was not ready after {self.timeout:.0f} s (see {self.log_path})")
                time.sleep(0.1)
            address = f"127.0.0.1:{int(ready.read_text())}"
            wait_healthy(address, end)
        except BaseException:
            self.stop()
            raise
        print(f"== server healthy at {address} (pid {self.proc.pid})", flush=True)
        return address

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        finally:
            self.log.close()
            self.tmp.cleanup()
        print(f"== server stopped (exit code {self.proc.returncode})", flush=True)
        self.proc = None


def wait_healthy(address: str, deadline: float) -> None:
    """Poll grpc.health.v1 until SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from vla.errors import UserError

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise UserError(f"the server at {address} did not report SERVING")
            time.sleep(0.1)


class TimedRemote:
    """RemoteSimPolicy that records the wall time of every predict call (one gRPC round trip per row)."""

    privileged = False

    def __init__(self, address: str):
        from vla.client import RemoteSimPolicy

        self.inner, self.latencies = RemoteSimPolicy(address), []

    def reset(self, env_ids=None) -> None:
        self.inner.reset(env_ids)

    def predict(self, obs_batch):
        t = time.perf_counter()
        out = self.inner.predict(obs_batch)
        self.latencies.append(time.perf_counter() - t)
        return out

    def close(self) -> None:
        self.inner.close()


def evaluate_served(args, ckpt: Path, address: str, out: Path) -> dict:
    import numpy as np

    from sim.evaluate import EvalConfig, evaluate
    from sim.schema import parse_tasks
    from vla.errors import UserError

    saved = _saved_eval_config(ckpt)
    try:
        cfg = EvalConfig(tasks=parse_tasks(args.tasks), episodes=args.episodes, workers=1,
                         horizon=args.horizon or saved.get("horizon", 1), ensemble=saved.get("ensemble", False),
                         max_steps=args.max_steps or saved.get("max_steps", 500), instructions="heldout",
                         video_dir=str(out / "videos"))
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"== vla eval --server {address}: {len(cfg.tasks)} tasks x {cfg.episodes} held-out seeds, held-out "
          f"paraphrases, horizon {cfg.horizon}, max {cfg.max_steps} steps", flush=True)
    policy = TimedRemote(address)
    try:
        results = evaluate(policy, cfg, progress=True)
    finally:
        policy.close()
    lat = np.asarray(policy.latencies[1:] or policy.latencies) * 1e3  # the first call warms the server up
    results["grpc_latency_ms"] = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                  "calls": int(lat.size), "batch": 1}
    results["server"] = address
    results["checkpoint"] = str(ckpt)
    return results


def _saved_eval_config(ckpt: Path) -> dict:
    """The settings the model was evaluated with: its config's execution fields, then its eval.json's."""
    from vla.policy.checkpoint import load_config

    out = {}
    path = ckpt / "eval.json"
    if path.is_file():
        try:
            out = dict(json.loads(path.read_text()).get("policy", {}).get("config", {}))
        except (json.JSONDecodeError, AttributeError):
            out = {}
    config = load_config(ckpt)
    if config.exec_horizon is not None:
        out.update(horizon=config.exec_horizon, ensemble=config.exec_ensemble)
    return out


def results_table(results: dict) -> str:
    lat = results["grpc_latency_ms"]
    lines = ["| task | success | episodes | mean steps | gRPC latency p50 / p99 (ms) |", "|---|---|---|---|---|"]
    for task, r in [*results["tasks"].items(), ("**overall**", results["overall"])]:
        lines.append(f"| {task} | {r['success_rate']:.2f} | {r['episodes']} | {r['mean_steps']:.1f} | "
                     f"{lat['p50']:.1f} / {lat['p99']:.1f} |")
    lines.append(f"\n{lat['calls']} policy calls over gRPC (one client), {results['wall_seconds']:.1f} s")
    return "\n".join(lines)


def classify_scenes(args, ckpt: Path, out: Path) -> dict:
    """Render held-out first frames of the demo tasks and classify them: templates vs CoOp context."""
    from sim.schema import EVAL_SEED_BASE, parse_tasks
    from vla.cli import main
    from vla.default_model import CLASSES_FILE, CLIP_FILE, CONTEXT_FILE, render_scenes

    config = json.loads((ckpt / "config.json").read_text())
    classes = json.loads((ckpt / CLASSES_FILE).read_text())
    tasks = [t for t in parse_tasks(args.tasks) if t in classes] or list(classes)
    print(f"== vla classify: {args.scenes} held-out scenes per task, {len(classes)} scene classes", flush=True)
    images = render_scenes(tasks, range(EVAL_SEED_BASE + 500, EVAL_SEED_BASE + 500 + args.scenes),
                           out / "scenes")
    model = ["--model", config["clip_model"], "--pretrained", str(ckpt / CLIP_FILE)]
    names = ["--classes", ",".join(classes.values())]
    for argv in (["classify", *model, "--images", str(images), *names, "--output", str(out / "templates.json")],
                 ["coop", "eval", *model, "--images", str(images), *names, "--coop", str(ckpt / CONTEXT_FILE),
                  "--output", str(out / "coop.json")]):
        if main(argv) != 0:
            return {}
    acc = {k: json.loads((out / f"{k}.json").read_text())["metrics"]["acc1"] for k in ("templates", "coop")}
    return {**acc, "images": len(tasks) * args.scenes, "classes": len(classes)}


def classification_only(args) -> int:
    """The interim demo: zero-shot templates vs CoOp on generated colour images with the tiny random CLIP."""
    from vla.cli import main
    from vla.synthetic import make_colour_folder

    out = Path(args.out)
    images = make_colour_folder(out / "images", per_class=10)
    print(f"== generated {images} (8 colour classes x 10 images)")
    print("== zero-shot with the 80 OpenAI templates")
    tiny = ["--model", "vla-tiny"]  # explicit: this fallback runs exactly when no default CLIP is committed
    main(["classify", *tiny, "--images", str(images), "--output", str(out / "templates.json")])
    print(f"== CoOp: class-specific context learned from {args.shots} shots per class")
    ctx = out / "context.safetensors"
    main(["coop", "train", *tiny, "--images", str(images), "--shots", str(args.shots), "--csc", "--n-ctx", "4",
          "--epochs", "40", "--out", str(ctx)])
    main(["coop", "eval", *tiny, "--images", str(images), "--coop", str(ctx), "--output", str(out / "coop.json")])
    t = json.loads((out / "templates.json").read_text())["metrics"]["acc1"]
    c = json.loads((out / "coop.json").read_text())["metrics"]["acc1"]
    print("\n| prompts | top-1 |\n|---|---|")
    print(f"| templates (openai, 80) | {t:.3f} |\n| CoOp ({args.shots}-shot, class-specific) | {c:.3f} |")
    print(f"\nconfusion matrices: {out}/templates_confusion.png, {out}/coop_confusion.png")
    print("(the tiny CLIP tower is random here, so templates sit near chance; the trained default model replaces it)")
    return 0
