"""Safe file I/O: atomic writes (temp file + rename) and state-dict loading that never unpickles objects."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vla.errors import UserError

TMP_SUFFIX = ".tmp"  # a killed writer can leave `.<name>.*.tmp` behind; readers may delete those


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on failure delete it.

    A crash mid-write never leaves a truncated file under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a tensor state dict from .safetensors or .pt/.pth/.bin without executing pickled code.

    Unwraps `{'state_dict': ...}` and strips DataParallel `module.` prefixes. Refuses TorchScript archives and
    pickles holding anything but tensors, with a message that says what to do.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        if _is_torchscript_archive(path):
            raise UserError(
                f"{path} is a TorchScript archive (e.g. OpenAI's original CLIP release); we never load executable "
                "archives. On a trusted machine run `torch.jit.load(path).state_dict()` and save it with "
                "safetensors, or pass the open_clip tag (e.g. --pretrained openai) where you have internet."
            )
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError from the weights-only unpickler, zip errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"refusing to load {path}: it holds something other than plain tensors ({first}). "
                "Save `model.state_dict()` (tensors only), preferably as .safetensors."
            ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} does not hold a state dict of tensors (got {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines log (metrics.jsonl); [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Drop records past `step`: a run killed after its last checkpoint logged steps that a resume redoes."""
    path = Path(path)
    if path.exists():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["step"] <= step))
