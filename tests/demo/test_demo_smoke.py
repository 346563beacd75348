"""The training pipeline's smoke preset end to end, then `vla demo` on its export through the real server.

One module-scoped pipeline run (~45 s on 2 cores) feeds three checks: the export is the fp16 image of the
trained policy and its card reports the evaluation that was run; a one-task, one-episode demo through the server
writes the table, GIF and JSON; Ctrl-C in the middle of a demo leaves no server behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("smoke")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default.py"), "--preset", "smoke", "--work",
                        str(work), "--no-progress"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work


def test_export_is_fp16_image_of_trained_policy(smoke):
    from safetensors.torch import load_file

    from vla.policy import VLAPolicy
    from vla.policy.config import PolicyConfig

    exp = smoke / "export"
    final = smoke / "dagger1" / "policy" / "policy"  # the smoke preset ends with one DAgger round
    trained, exported = load_file(str(final / "model.safetensors")), load_file(str(exp / "model.safetensors"))
    bc = load_file(str(smoke / "head" / "policy" / "model.safetensors"))  # the second stage, before the round
    assert any(not bool((bc[k] == v).all()) for k, v in trained.items())  # the round trained on
    assert trained.keys() == exported.keys()
    for k, v in trained.items():
        want = v.half() if v.is_floating_point() else v
        assert exported[k].dtype == want.dtype and bool((exported[k] == want).all()), k
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["clip_pretrained"] is None  # self-contained
    assert PolicyConfig.from_dict(cfg).to_dict() == cfg
    res = json.loads((smoke / "eval" / "policy.json").read_text())
    # the execution settings the model was evaluated with travel in its config
    assert (cfg["exec_horizon"], cfg["exec_ensemble"]) == (res["config"]["horizon"], res["config"]["ensemble"])
    policy = VLAPolicy.load(exp)
    assert policy.config.action_head == "mlp" and policy.config.model_version.startswith("trained-")
    stage1 = load_file(str(smoke / "policy" / "policy" / "model.safetensors"))
    for k in (k for k in trained if k.startswith(("keypoint_encoder.", "privileged_head."))):
        assert bool((trained[k] == stage1[k]).all()), k  # the perception of stage 1, frozen since
    clip_fp32 = load_file(str(smoke / "clip" / "clip.safetensors"))
    clip_fp16 = load_file(str(exp / "clip.safetensors"))
    assert all(bool((clip_fp16[k] == v.half()).all()) for k, v in clip_fp32.items() if v.is_floating_point())
    # the card reports what was measured
    card = (exp / "MODEL_CARD.md").read_text()
    rollouts = json.loads((smoke / "dagger1" / "data" / "done.json").read_text())
    assert rollouts["episodes"] == 1 and list(rollouts["successes"]) == ["reach-v3"]  # the round's one task
    assert f"round 1: {rollouts['episodes']} student rollouts on reach-v3 ({rollouts['steps']} labelled steps" in card
    more = json.loads((smoke / "data_head" / "done.json").read_text())  # the head's own demonstrations
    from safetensors.numpy import load_file as load_np

    from sim.dataset import EpisodeDataset

    def rows(*folders):
        return len(EpisodeDataset([smoke / f for f in folders], split="train", chunk_len=cfg["chunk_len"]))

    # the head trained on the demonstrations and its own; the round's fresh head on those and the rollouts
    assert len(load_np(str(smoke / "head" / "positions.safetensors"))["state"]) == rows("data", "data_head")
    assert len(load_np(str(smoke / "dagger1" / "policy" / "positions.safetensors"))["state"]) == \
        rows("data", "data_head", "dagger1/data") > rows("data", "data_head")
    assert more["episodes"] == 2 and f"plus {more['episodes']} more (1 per task" in card
    for task, r in res["tasks"].items():
        assert f"| {task} | {r['success_rate']:.2f} |" in card
    scenes = json.loads((smoke / "coop" / "done.json").read_text())
    assert f"**{scenes['templates']:.3f}**" in card and f"**{scenes['coop']:.3f}**" in card
    summary = json.loads((smoke / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"collect", "collect-head", "clip", "coop", "policy", "head", "dagger1-collect",
                                         "dagger1-train", "eval", "export"}
    assert sum(p.stat().st_size for p in exp.iterdir()) < 50 * 2**20


def test_rerun_skips_finished_stages(smoke):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default.py"), "--preset", "smoke", "--work",
                        str(smoke), "--no-progress"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("collect", "collect-head", "clip", "coop", "policy", "dagger1-collect", "dagger1-train", "eval",
                  "export"):
        assert f"== {stage}: done" in r.stdout


def _demo_cmd(smoke: Path, out: Path, episodes: int = 1, max_steps: int = 20) -> list[str]:
    return [sys.executable, "-m", "vla.cli", "demo", "--checkpoint", str(smoke / "export"), "--tasks", "reach-v3",
            "--episodes", str(episodes), "--max-steps", str(max_steps), "--scenes", "1", "--out", str(out)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _server_pid(stdout: str) -> int:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("== server healthy"))
    return int(line.rsplit("pid ", 1)[1].rstrip(")"))


def test_demo_through_server(smoke, tmp_path):
    r = subprocess.run(_demo_cmd(smoke, tmp_path), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    t = res["tasks"]["reach-v3"]
    assert t["episodes"] == 1 and t["mean_steps"] <= 20 and t["seeds"][0] >= 1_000_000  # held-out seed
    assert res["config"]["instructions"] == "heldout"
    lat = res["grpc_latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and lat["calls"] >= 20 / res["config"]["horizon"] - 1
    assert f"| reach-v3 | {t['success_rate']:.2f} | 1 | {t['mean_steps']:.1f} | {lat['p50']:.1f} / " in r.stdout
    assert list((tmp_path / "videos").glob("reach-v3_seed*.gif"))
    sc = res["scene_classification"]
    assert sc["images"] == 1 and sc["classes"] == 2  # one held-out render of reach, smoke preset's two classes
    for k in ("templates", "coop"):  # the accuracy is what the per-image predictions say
        rows = list(csv.DictReader(open(tmp_path / f"{k}_predictions.csv")))
        assert len(rows) == 1 and sc[k] == float(rows[0]["label"] == rows[0]["prediction"])
    assert not _alive(_server_pid(r.stdout))


def test_ctrl_c_leaves_no_server(smoke, tmp_path):
    proc = subprocess.Popen(_demo_cmd(smoke, tmp_path, episodes=5, max_steps=200), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    try:
        for line in proc.stdout:
            seen += line
            if line.startswith("== vla eval --server"):
                break
        pid = _server_pid(seen)
        assert _alive(pid)
        time.sleep(1.0)  # mid-evaluation
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the server outlived an interrupted demo"
