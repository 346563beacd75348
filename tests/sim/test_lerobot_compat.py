"""Compatibility with the real LeRobot library, run in its own virtual environment (never this project's).

LeRobot writes a dataset with its own API (`LeRobotDataset.create` / `add_frame` / `save_episode` / `finalize`)
and we read it; we export one and LeRobot's loader reads it; LeRobot's v2.1 -> v3.0 converter takes our v2.1
fixture. Skipped unless `VLA_LEROBOT_PYTHON` (default /tmp/lerobot-venv/bin/python) is a Python where `lerobot` (or
the standalone `ledataset`) imports. Verified 2026-12-01 with a Python 3.11 venv holding lerobot 0.4.4 (installed
--no-deps, plus draccus 0.10.0, accelerate, einops) and lerobot-dataset 0.4.4 with their other dependencies
(datasets 4.1.1, av 15.1.0, pandas), torchcodec 0.17.0 over Debian's FFmpeg 5.1 libraries (LeRobot's decoder:
torchvision 0.29 has no VideoReader for its PyAV path), and torch/torchvision borrowed read-only from this
project's .venv through a .pth file (LeRobot 0.5+ needs Python 3.12; a torch for it would be a multi-GB download).
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import lerobot_fixtures as fx
import numpy as np
import pytest

from sim.dataset import NpzEpisodeSource
from sim.lerobot import LeRobotSource
from sim.lerobot.writer import export_lerobot

PYTHON = os.environ.get("VLA_LEROBOT_PYTHON", "/tmp/lerobot-venv/bin/python")
HERE = Path(__file__).parent

WRITE = """
import importlib, sys
import numpy as np
sys.path.insert(0, {here!r})
import lerobot_fixtures as fx
LeRobotDataset = importlib.import_module({mod!r} + ".datasets.lerobot_dataset").LeRobotDataset
img = {{"dtype": "video", "shape": (fx.SIZE, fx.SIZE, 3), "names": ["height", "width", "channels"]}}
features = {{"observation.images.top": img, "observation.images.wrist": dict(img, dtype="image"),
            "observation.state": {{"dtype": "float32", "shape": (fx.STATE_DIM,), "names": None}},
            "action": {{"dtype": "float32", "shape": (fx.ACTION_DIM,), "names": None}}}}
ds = LeRobotDataset.create("local/compat", fps=fx.FPS, root={root!r}, features=features, use_videos=True)
for e, n in enumerate({lengths!r}):
    for t in range(n):
        ds.add_frame({{"observation.images.top": fx.frame_of(e, t, 0), "observation.images.wrist": fx.frame_of(e, t, 1),
                      "observation.state": fx.state_of(e, t), "action": fx.action_of(e, t),
                      "task": fx.TASKS[fx.task_of(e)]}})
    ds.save_episode()
ds.finalize()
print(importlib.import_module({mod!r}).__name__, ds.meta.info["codebase_version"])
"""

READ = """
import importlib, sys
import numpy as np
LeRobotDataset = importlib.import_module({mod!r} + ".datasets.lerobot_dataset").LeRobotDataset
ds = LeRobotDataset("local/ours", root={root!r})
out = {{k: [] for k in ("state", "action", "episode_index", "frame_index", "rgb", "depth", "task")}}
for i in range(len(ds)):
    s = ds[i]
    out["state"].append(s["observation.state"].numpy()); out["action"].append(s["action"].numpy())
    out["episode_index"].append(int(s["episode_index"])); out["frame_index"].append(int(s["frame_index"]))
    out["rgb"].append(np.stack([(s[f"observation.images.{{c}}"].permute(1, 2, 0).numpy() * 255).round()
                                for c in ("corner", "top")]))
    out["depth"].append(s["observation.depth.corner"].numpy()); out["task"].append(s["task"])
np.savez({dump!r}, **{{k: np.array(v) for k, v in out.items()}}, fps=ds.fps, version=ds.meta.info["codebase_version"])
"""


def _importable(mod: str) -> bool:
    if not Path(PYTHON).exists():
        return False
    r = subprocess.run([PYTHON, "-c", f"import {mod}.datasets.lerobot_dataset"], capture_output=True, timeout=300)
    return r.returncode == 0


@pytest.fixture(scope="module", params=["lerobot", "ledataset"])
def lerobot_module(request):
    if not _importable(request.param):
        pytest.skip(f"{request.param} does not import in {PYTHON} (set VLA_LEROBOT_PYTHON to a LeRobot environment)")
    return request.param


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_we_read_what_lerobot_writes(lerobot_module, tmp_path):
    root, lengths = tmp_path / "theirs", (5, 7, 4)
    _run(WRITE.format(here=str(HERE), mod=lerobot_module, root=str(root), lengths=lengths))
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    src = LeRobotSource(root)
    assert src.cameras == ("top", "wrist") and [e["length"] for e in src.episodes()] == list(lengths)
    assert [e["instruction"] for e in src.episodes()] == [fx.TASKS[fx.task_of(e)] for e in range(3)]
    for e, n in enumerate(lengths):
        np.testing.assert_array_equal(src.arrays(e)["state"], np.stack([fx.state_of(e, t) for t in range(n)]))
        np.testing.assert_array_equal(src.arrays(e)["actions"], np.stack([fx.action_of(e, t) for t in range(n)]))
        for t in range(n):
            rgb, _ = src.frame(e, t, [0, 1])
            assert abs(rgb[0].astype(int) - fx.grey(e, t, 0)).max() <= 4, (e, t)  # their AV1 encode
            np.testing.assert_array_equal(rgb[1], fx.frame_of(e, t, 1))  # their PNG in parquet


@pytest.mark.slow
def test_lerobot_reads_what_we_write(lerobot_module, tmp_path):
    npz = fx.make_npz(tmp_path / "npz", cameras=("corner", "top"))
    export_lerobot(npz, tmp_path / "ours", codec="av1", fps=80, progress=False)
    dump = tmp_path / "dump.npz"
    _run(READ.format(mod=lerobot_module, root=str(tmp_path / "ours"), dump=str(dump)))
    got = np.load(dump)
    assert str(got["version"]) == "v3.0" and int(got["fps"]) == 80
    src = NpzEpisodeSource(npz)
    i = 0
    for e, meta in enumerate(src.episodes()):
        a = src.arrays(e)
        for t in range(meta["length"]):
            assert (got["episode_index"][i], got["frame_index"][i], got["task"][i]) == (e, t, meta["instruction"])
            np.testing.assert_array_equal(got["state"][i], a["state"][t])
            np.testing.assert_array_equal(got["action"][i], a["actions"][t])
            rgb, depth = src.frame(e, t, [0, 1])
            assert np.abs(got["rgb"][i] - rgb).mean() <= 8, (e, t)  # decoded by LeRobot's own video backend
            np.testing.assert_array_equal(got["depth"][i], np.round(depth[0] * 1000))
            i += 1
    assert i == len(got["state"])


CONVERT = """
import importlib
convert = importlib.import_module({mod!r} + ".datasets.v30.convert_dataset_v21_to_v30").convert_dataset
convert("local/v21", root={root!r}, push_to_hub=False)
"""


@pytest.mark.slow
def test_lerobot_converts_our_v21_fixture_to_what_we_read_alike(lerobot_module, tmp_path):
    """LeRobot's own v2.1 -> v3.0 converter accepts the hand-built v2.1 fixture (so it follows the published
    layout), and both versions read identically here."""
    fx.make_v21(tmp_path / "local/v21")
    _run(CONVERT.format(mod=lerobot_module, root=str(tmp_path)))
    old, new = LeRobotSource(tmp_path / "local/v21_old"), LeRobotSource(tmp_path / "local/v21")
    assert (old.meta.version, new.meta.version) == ("v2.1", "v3.0")
    assert old.episodes() == new.episodes()
    for e, meta in enumerate(new.episodes()):
        for k in ("state", "actions"):
            np.testing.assert_array_equal(old.arrays(e)[k], new.arrays(e)[k])
        for t in range(meta["length"]):  # v3.0: the converter concatenated the episodes' MP4s into one file
            np.testing.assert_array_equal(old.frame(e, t, [0, 1])[0], new.frame(e, t, [0, 1])[0])
