"""Regenerate the golden observation and expected action chunk of the committed default model.

    python scripts/make_golden.py            # writes tests/demo/golden_default.safetensors

Run it after retraining the default model (vla/assets/default), never to make a failing test pass after a
change to the model code: `tests/demo/test_golden.py` exists to catch exactly that. The observation is
rendered once and stored (renderers differ across machines; the test must not re-render). The file's metadata
records the sha256 of the checkpoint's weights, so a stale golden file is reported as such.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT / "tests" / "demo" / "golden_default.safetensors"
TASK, SEED = "push-v3", 1_000_007  # a held-out seed


def weights_sha256(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def main() -> int:
    import numpy as np
    import torch

    from sim.env import MetaWorldRGBD
    from vla.default_model import default_checkpoint
    from vla.files import save_safetensors_atomic
    from vla.policy import VLAPolicy

    ckpt = default_checkpoint()
    if ckpt is None:
        raise SystemExit("no default model in vla/assets/default: train and export it first "
                         "(python scripts/train_default.py --preset default --work W --export vla/assets/default)")
    env = MetaWorldRGBD(task=TASK, image_size=128, depth=True, instructions="heldout")
    try:
        obs, _ = env.reset(seed=SEED)
    finally:
        env.close()
    batch = {k: np.asarray(obs[k])[None] for k in ("rgb", "depth", "intrinsics", "state")}
    batch["instruction"] = [obs["instruction"]]
    policy = VLAPolicy.load(ckpt)
    with torch.inference_mode():
        chunk = np.asarray(policy.predict(batch))  # (1, T, 4)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items() if k != "instruction"}
    tensors["expected_actions"] = torch.from_numpy(chunk.astype(np.float32))
    meta = {"instruction": obs["instruction"], "task": TASK, "seed": str(SEED),
            "weights_sha256": weights_sha256(ckpt), "config": (ckpt / "config.json").read_text()}
    save_safetensors_atomic(tensors, GOLDEN, metadata=meta)
    print(f"wrote {GOLDEN}: {TASK} seed {SEED}, '{obs['instruction']}', expected chunk {chunk[0].round(3).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
