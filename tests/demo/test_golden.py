"""The committed default model: loads, its config round-trips, and stored observations still give the stored
logits (within the tolerance stored beside them) and action chunks -- for a head that regresses the chunk, its
normalised output instead of logits. Guards against accidental changes to the model
code: a pathway dropped from `forward` moves the logits even where the decoded bins happen to stay.

Regenerate with `python scripts/make_golden.py` only after retraining the model; a golden file older than the
model's files is reported as stale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vla.default_model import default_checkpoint

GOLDEN = Path(__file__).parent / "golden_default.safetensors"
FORMAT = "vla.golden/2"
REGENERATE = "run `python scripts/make_golden.py` after retraining (never to hide a change of the model code)"
CKPT = default_checkpoint()
pytestmark = pytest.mark.skipif(
    CKPT is None, reason="no default model committed yet in vla/assets/default "
                         "(scripts/train_default.py --preset default --export vla/assets/default)")


def _read_golden():
    if not GOLDEN.exists():
        return {}, {}
    from safetensors import safe_open

    with safe_open(str(GOLDEN), "np") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


META, DATA = _read_golden()
RECORDS = json.loads(META["observations"]) if META.get("format") == FORMAT else []


def test_default_checkpoint_loads_and_config_round_trips():
    from vla.policy import VLAPolicy
    from vla.policy.config import PolicyConfig

    raw = json.loads((CKPT / "config.json").read_text())
    assert PolicyConfig.from_dict(raw).to_dict() == raw
    policy = VLAPolicy.load(CKPT)
    assert policy.config.to_dict() == raw
    assert sum(p.stat().st_size for p in CKPT.iterdir()) <= 50 * 2**20


def check_golden_is_current() -> None:
    from vla.policy.checkpoint import FILES

    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: {REGENERATE}")
    if META.get("format") != FORMAT:
        pytest.fail(f"{GOLDEN} has format {META.get('format')!r}, this test reads {FORMAT!r}: {REGENERATE}")
    stored = json.loads(META["checkpoint_sha256"])
    now = {f: hashlib.sha256((CKPT / f).read_bytes()).hexdigest() for f in FILES}
    changed = sorted(f for f in now if stored.get(f) != now[f])
    if changed:
        pytest.fail(f"{GOLDEN.name} is stale: {changed} of the default model changed since it was made; {REGENERATE}")


def test_golden_file_is_current_and_covers_the_cases():
    check_golden_is_current()
    assert len(RECORDS) >= 3 and len({r["task"] for r in RECORDS}) >= 3
    assert {r["depth"] for r in RECORDS} == {True, False}


@pytest.fixture(scope="module")
def policy():
    from vla.policy import VLAPolicy

    check_golden_is_current()
    return VLAPolicy.load(CKPT)


@pytest.mark.parametrize("rec", RECORDS or [{"name": "none"}], ids=lambda r: r["name"])
def test_golden_observation_gives_golden_logits_and_chunk(policy, rec):
    import torch

    from sim import schema

    name = rec["name"]
    obs = {k: DATA[f"{name}.{k}"] for k in ("rgb", "intrinsics", "state")}
    obs["instruction"] = [rec["instruction"]]
    assert (f"{name}.depth_mm" in DATA) == rec["depth"]
    if rec["depth"]:
        obs["depth"] = DATA[f"{name}.depth_mm"].astype(np.float32) / np.float32(schema.DEPTH_SCALE)
    with torch.inference_mode():
        logits = policy(**policy.prepare(obs))
    atol, rtol = float(META["logits_atol"]), float(META["logits_rtol"])
    if policy.config.action_output == "continuous":  # the head regresses the chunk: its output, then predict()
        want = DATA[f"{name}.normalised"]
        np.testing.assert_allclose(logits.float().numpy(), want, rtol=rtol, atol=atol, err_msg=f"{name}: output")
        span = policy.action_grid.q_high - policy.action_grid.q_low  # [-1, 1] -> actions scales by span / 2
        np.testing.assert_allclose(policy.predict(obs), DATA[f"{name}.actions"], rtol=0,
                                   atol=float((atol + rtol) * max(1.0, span.max() / 2)) + 1e-5)
        return
    groups = json.loads(META["groups"])
    assert groups == [g.name for g in policy.action_grid.groups]
    exact = np.ones(DATA[f"{name}.tokens"].shape, bool)  # (1, T, G): tokens whose top-1 margin exceeds the tolerance
    for gi, (g, lg) in enumerate(zip(groups, logits)):
        want = DATA[f"{name}.logits.{g}"]
        np.testing.assert_allclose(lg.float().numpy(), want, rtol=rtol, atol=atol, err_msg=f"{name}: {g} logits")
        top2 = np.sort(want, axis=-1)[..., -2:]
        exact[..., gi] = top2[..., 1] - top2[..., 0] > 2 * (atol + rtol * np.abs(top2[..., 1]))
    tokens = policy.tokens_from_logits(logits).numpy()
    np.testing.assert_array_equal(tokens[exact], DATA[f"{name}.tokens"][exact])
    steps = exact.all(-1)  # (1, T): steps whose every token is pinned down
    assert steps.any()
    chunk = np.asarray(policy.action_grid.decode(tokens), dtype=np.float32)
    # decoded grid-bin centres: the same tokens give the same floats up to float32 rounding
    np.testing.assert_allclose(chunk[steps], DATA[f"{name}.actions"][steps], rtol=0, atol=1e-5)
