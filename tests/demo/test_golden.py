"""The committed default model: loads, its config round-trips, and one stored observation still gives the stored
action chunk (guards against accidental changes to the model code). Regenerate with scripts/make_golden.py only
after retraining the model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vla.default_model import default_checkpoint

GOLDEN = Path(__file__).parent / "golden_default.safetensors"
CKPT = default_checkpoint()
pytestmark = pytest.mark.skipif(
    CKPT is None, reason="no default model committed yet in vla/assets/default "
                         "(scripts/train_default.py --preset default --export vla/assets/default)")


def test_default_checkpoint_loads_and_config_round_trips():
    from vla.policy import VLAPolicy
    from vla.policy.config import PolicyConfig

    raw = json.loads((CKPT / "config.json").read_text())
    assert PolicyConfig.from_dict(raw).to_dict() == raw
    policy = VLAPolicy.load(CKPT)
    assert policy.config.to_dict() == raw
    assert sum(p.stat().st_size for p in CKPT.iterdir()) <= 50 * 2**20


def test_golden_observation_gives_golden_chunk():
    import torch
    from safetensors import safe_open

    from vla.policy import VLAPolicy

    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: run python scripts/make_golden.py after committing the default model")
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k).numpy() for k in f.keys()}
    sha = hashlib.sha256((CKPT / "model.safetensors").read_bytes()).hexdigest()
    assert meta["weights_sha256"] == sha, "the default model changed: regenerate with scripts/make_golden.py"
    obs = {k: data[k] for k in ("rgb", "depth", "intrinsics", "state")}
    obs["instruction"] = [meta["instruction"]]
    with torch.inference_mode():
        chunk = np.asarray(VLAPolicy.load(CKPT).predict(obs))
    # decoded grid-bin centres: the same tokens give the same floats up to float32 rounding
    np.testing.assert_allclose(chunk, data["expected_actions"], rtol=0, atol=1e-5)
