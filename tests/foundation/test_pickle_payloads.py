"""Files whose unpickling would run code: every loader refuses them, and the code never runs.

The payload's ``__reduce__`` makes unpickling call ``exec``, which creates a marker file. A control proves the payload
is live (an unsafe ``torch.load(..., weights_only=False)`` does create the marker), so "no marker afterwards" means
the loader never executed it, not that the payload was harmless. Besides the runtime checks, a scan of the source
keeps every ``torch.load`` at ``weights_only=True`` and every ``np.load`` at ``allow_pickle=False``, which covers
loaders too deep inside a training loop to call here (CLIP pre-training resume) and loaders added later.
"""

from __future__ import annotations

import ast
import builtins
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = (".pt", ".pth", ".bin")
REFUSED = "refusing to load .*: it holds something other than plain tensors"  # vla.files.load_state_dict
pytestmark = [pytest.mark.filterwarnings("ignore:Detected pickle protocol"),  # the bare pickle stream's protocol
              pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")]  # the archives we make to refuse


class Payload:
    """Unpickling this runs ``exec``: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",)


KINDS = ("zip", "legacy", "raw")  # torch.save's zip format, its pre-1.6 format, a bare pickle stream


def write_payload(path: Path, marker: Path, kind: str = "zip") -> Path:
    """A state dict holding the payload beside a real tensor, in one of KINDS."""
    state = {"state_dict": {"weight": torch.zeros(2), "bias": Payload(marker)}}
    if kind == "raw":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
    assert not marker.exists()
    return path


def unsafe_load(path: Path):
    """What a careless loader does."""
    if path.name.startswith("raw"):
        return pickle.loads(path.read_bytes())
    return torch.load(path, weights_only=False)


@pytest.fixture
def payloads(tmp_path):
    """(marker, [payload files]): every kind under every suffix we accept."""
    marker = tmp_path / "marker"
    return marker, [write_payload(tmp_path / f"{kind}{s}", marker, kind) for kind in KINDS for s in SUFFIXES]


def test_the_payload_is_live(payloads):
    marker, files = payloads
    for path in files:
        unsafe_load(path)
        assert marker.read_text() == "pwned", path
        marker.unlink()


def test_state_dict_loader_refuses(payloads):
    from vla.files import load_state_dict

    marker, files = payloads
    for path in files:
        with pytest.raises(UserError, match=REFUSED):
            load_state_dict(path)
        assert not marker.exists(), path


def test_clip_weights_refused(payloads):
    from vla.clip import load_clip

    marker, files = payloads
    for path in files:
        with pytest.raises(UserError, match=REFUSED):
            load_clip("vla-tiny", pretrained=str(path))
        assert not marker.exists(), path


def test_policy_config_naming_payload_clip_refused(payloads):
    from vla.policy import PolicyConfig, VLAPolicy

    marker, files = payloads
    with pytest.raises(UserError, match=REFUSED):
        VLAPolicy.from_config(PolicyConfig.tiny(clip_pretrained=str(files[0])))
    assert not marker.exists()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from vla.policy import PolicyConfig, VLAPolicy

    path = tmp_path_factory.mktemp("policy") / "policy"
    VLAPolicy.from_config(PolicyConfig.tiny()).save(path)
    return path


def test_policy_checkpoint_refused(payloads, policy_dir, tmp_path):
    """The payload in place of model.safetensors, or named as the checkpoint itself."""
    from vla.policy import VLAPolicy

    marker, files = payloads
    for path in files:
        ckpt = tmp_path / f"ckpt_{path.name}"
        shutil.copytree(policy_dir, ckpt)
        shutil.copy(path, ckpt / "model.safetensors")
        with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
            VLAPolicy.load(ckpt)
        with pytest.raises(UserError, match="policy checkpoint not found|is not a policy checkpoint"):
            VLAPolicy.load(path)
        assert not marker.exists(), path


def test_training_resume_refuses_payload_train_state(payloads, policy_dir, tmp_path):
    """`vla train` resume reads OUT/checkpoint/train_state.pt (optimizer + RNG state) with weights_only=True."""
    from vla.policy import VLAPolicy
    from vla.train import load_training_checkpoint

    marker, files = payloads
    config = VLAPolicy.load(policy_dir).config
    for path in files:
        ckpt = tmp_path / f"resume_{path.name}"
        shutil.copytree(policy_dir, ckpt)
        shutil.copy(path, ckpt / "train_state.pt")
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch's message
            load_training_checkpoint(ckpt, config, torch.device("cpu"))
        assert not marker.exists(), path


def test_coop_context_refused(payloads):
    from vla.clip import load_clip
    from vla.prompts.coop import PromptLearner

    clip = load_clip("vla-tiny")
    marker, files = payloads
    for path in files:
        with pytest.raises(UserError, match="is not a safetensors context file"):
            PromptLearner.load(path, clip)
        assert not marker.exists(), path


def test_depth_model_with_payload_weights_refused(tmp_path):
    """A local transformers depth model whose pytorch_model.bin is the payload: transformers loads .bin files
    with weights_only=True, so the load fails and nothing runs."""
    tf = pytest.importorskip("transformers")
    from vla.policy.depth_estimator import MonocularDepth

    backbone = tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               image_size=56, patch_size=14, out_features=["stage1", "stage2"],
                               reshape_hidden_states=False)
    tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                           reassemble_factors=[1.0, 0.5], fusion_hidden_size=16, head_hidden_size=8,
                           depth_estimation_type="metric").save_pretrained(tmp_path)
    marker = tmp_path / "marker"
    write_payload(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(Exception) as e:  # transformers' own error type and message
        MonocularDepth.load(tmp_path)
    assert "weights only" in str(e.value).lower() or "weights_only" in str(e.value), e.value
    assert not marker.exists()


def test_episode_with_pickled_object_array_refused(tmp_path):
    """Episode files (`vla collect` layout) are read with allow_pickle=False."""
    from sim.episodes import EpisodeReader

    marker = tmp_path / "marker"
    path = tmp_path / "ep.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = Payload(marker)
    np.savez(path, actions=obj, state=np.zeros((1, 4), np.float32), intrinsics=np.eye(3)[None])
    with pytest.raises(ValueError, match="allow_pickle=False"):
        EpisodeReader(path)
    assert not marker.exists()


def _calls(tree: ast.AST, owner: str, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner:
            yield node


def _keyword_is(call: ast.Call, key: str, value) -> bool:
    return any(k.arg == key and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def test_every_loader_in_the_source_refuses_pickled_objects():
    sources = [p for d in ("vla", "sim", "kernels", "scripts") for p in sorted((ROOT / d).rglob("*.py"))
               if "_proto" not in p.parts]
    assert len(sources) > 30
    bad, torch_loads = [], 0
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT)
        for call in _calls(tree, "torch", "load"):
            torch_loads += 1
            if not _keyword_is(call, "weights_only", True):
                bad.append(f"{rel}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "np", "load"):
            if not _keyword_is(call, "allow_pickle", False):
                bad.append(f"{rel}:{call.lineno}: np.load without allow_pickle=False")
        for owner in ("pickle", "cPickle", "dill", "cloudpickle", "joblib"):
            for name in ("load", "loads", "Unpickler"):
                bad += [f"{rel}:{c.lineno}: {owner}.{name}" for c in _calls(tree, owner, name)]
    assert torch_loads >= 3  # files.load_state_dict, train and CLIP pre-training resume: the scan sees them
    assert not bad, bad


def test_plain_values_beside_tensors_refused(tmp_path):
    """The weights-only unpickler lets ints and strings through; a state dict must still hold tensors only."""
    from vla.files import load_state_dict

    path = tmp_path / "mixed.pt"
    torch.save({"weight": torch.zeros(2), "step": 3, "note": "x"}, path)
    with pytest.raises(UserError, match=r"entries that are not tensors: \['step', 'note'\]"):
        load_state_dict(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_torchscript_archive_refused_before_unpickling(tmp_path, suffix):
    """TorchScript archives carry code: refused by their layout with the advice (how to convert one on a trusted
    machine), not left to the unpickler."""
    from vla.files import load_state_dict

    path = tmp_path / f"scripted{suffix}"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UserError, match=r"TorchScript archive .*we never load executable archives.*"
                                        r"torch\.jit\.load\(path\)\.state_dict\(\)"):
        load_state_dict(path)
