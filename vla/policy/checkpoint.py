"""Policy checkpoint: one directory, written atomically, loaded without unpickling anything.

    DIR/model.safetensors   every weight (CLIP towers included: the checkpoint is self-contained)
    DIR/config.json         PolicyConfig.to_dict() (architecture, CLIP name, chunk length, image size, cameras,
                            action layout, grid bins)
    DIR/action_grid.json    ActionGrid.to_dict() (bin edges, q01/q99)
    DIR/stats.json          normalisation statistics applied by the policy (action bounds, state mean/std)

A directory is written complete under a temporary name and renamed into place; replacing an existing one
goes through a backup name (`.DIR.old`), which `load_policy` and `recover_dir` fall back to if a crash hit
between the two renames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vla.errors import UserError
from vla.files import save_safetensors_atomic, write_json_atomic

FILES = ("model.safetensors", "config.json", "action_grid.json", "stats.json")


def _backup(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the complete directory `tmp` to `path`, replacing what was there with at most one rename gap."""
    backup = _backup(path)
    if backup.exists() and path.exists():
        shutil.rmtree(backup)
    if path.exists():
        os.replace(path, backup)
    os.replace(tmp, path)
    if backup.exists():
        shutil.rmtree(backup)


def recover_dir(path: str | os.PathLike) -> Path | None:
    """`path` if it exists, else its backup left by a crash mid-replace, else None."""
    path = Path(path)
    if path.is_dir():
        return path
    backup = _backup(path)
    return backup if backup.is_dir() else None


def write_dir_atomic(path: str | os.PathLike, writer) -> None:
    """Call `writer(tmp_dir)` to fill a temporary sibling directory, then swap it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is shared like any output folder
    try:
        writer(tmp)
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def canonical_state(policy) -> dict[str, torch.Tensor]:
    """The state dict with aliases dropped (ClipEncoder registers its text tower twice: `model` and `_text`):
    the first key of each shared tensor is kept, loading it fills every alias."""
    seen, out = set(), {}
    for k, v in policy.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def write_policy_files(policy, folder: Path) -> None:
    state = canonical_state(policy)
    save_safetensors_atomic(state, folder / "model.safetensors", metadata={"format": "vla.policy"})
    write_json_atomic(folder / "config.json", policy.config.to_dict())
    policy.action_grid.save(folder / "action_grid.json")
    write_json_atomic(folder / "stats.json", policy.stats)


def save_policy(policy, path: str | os.PathLike) -> None:
    write_dir_atomic(path, lambda tmp: write_policy_files(policy, tmp))
    policy.checkpoint = str(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def load_config(path: str | os.PathLike):
    """The PolicyConfig of a checkpoint directory, without building the model."""
    from vla.policy.config import PolicyConfig

    folder = recover_dir(path)
    if folder is None or not (folder / "config.json").is_file():
        raise UserError(f"policy checkpoint not found (no config.json): {path}")
    return PolicyConfig.from_dict(_read_json(folder / "config.json"))


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a policy from a checkpoint directory; refuse (UserError naming the field/keys) what does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vla.policy.action_grid import ActionGrid
    from vla.policy.config import PolicyConfig
    from vla.policy.model import VLAPolicy

    folder = recover_dir(path)
    if folder is None:
        raise UserError(f"policy checkpoint not found: {path}")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder} is not a policy checkpoint: missing {missing}")
    config = PolicyConfig.from_dict(_read_json(folder / "config.json"))
    grid = ActionGrid.load(folder / "action_grid.json")
    stats = _read_json(folder / "stats.json")
    _check_stats(stats, config, folder)
    policy = VLAPolicy.from_config(config, grid, stats=stats, load_pretrained=False)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{folder / 'model.safetensors'} is not a readable safetensors file: {e}") from None
    own = canonical_state(policy)
    bad_shape = [f"{k}: file {tuple(v.shape)} vs config {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and v.shape != own[k].shape]
    miss, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if bad_shape or miss or extra:
        raise UserError(f"{folder}: weights do not match config.json (shape mismatches {bad_shape[:3]}, "
                        f"missing {miss[:3]}, unexpected {extra[:3]})")
    policy.load_state_dict(state, strict=False)  # aliases of `own` keys are filled through shared storage
    policy.checkpoint = str(path)
    return policy.to(device).eval()


def _check_stats(stats: Any, config, folder: Path) -> None:
    try:
        s = stats["state"]
        ok = len(s["mean"]) == len(s["std"]) == config.state_dim
        a = stats["action"]
        ok_a = len(a["q01"]) == len(a["q99"]) == config.action_dim
    except (KeyError, TypeError) as e:
        raise UserError(f"{folder / 'stats.json'}: missing field {e}") from None
    if not ok:
        raise UserError(f"{folder / 'stats.json'}: state.mean/std must have state_dim={config.state_dim} values")
    if not ok_a:
        raise UserError(f"{folder / 'stats.json'}: action.q01/q99 must have action_dim={config.action_dim} values")
