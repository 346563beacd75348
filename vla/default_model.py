"""The embedded default model: where it lives, what its directory holds, how it is exported and found.

    vla/assets/default/          (DEFAULT_DIR; written by `scripts/train_default.py --export vla/assets/default`)
        model.safetensors config.json action_grid.json stats.json   the policy (`VLAPolicy.load`), fp16 weights
        clip.safetensors         the contrastively pre-trained CLIP (fp16) for `vla classify --pretrained`
        scene_context.safetensors + scene_classes.json   CoOp context for the MT10 scene classes
        eval.json                evaluation results (policy and expert, same runner); curves *.png
        MODEL_CARD.md            data, training time and machine, parameter count, evaluation table

The policy files are read by `vla.policy.checkpoint.load_policy` like any checkpoint (fp16 tensors are cast to
the model's fp32 parameters on load), so the other files may sit beside them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vla.policy.checkpoint import FILES as POLICY_FILES

DEFAULT_DIR = Path(__file__).parent / "assets" / "default"
CLIP_FILE, CONTEXT_FILE, CLASSES_FILE = "clip.safetensors", "scene_context.safetensors", "scene_classes.json"
MAX_BYTES = 50 * 2**20  # the committed directory must stay under 50 MB
REQUIRED_FILES = (*POLICY_FILES, CLIP_FILE, CONTEXT_FILE, CLASSES_FILE)


def default_checkpoint() -> Path | None:
    """DEFAULT_DIR when a complete default model is committed there, else None."""
    d = DEFAULT_DIR
    return d if all((d / f).is_file() for f in REQUIRED_FILES) else None


def default_clip() -> tuple[str, str] | None:
    """(open_clip model name, weights file) of the committed default CLIP, or None when none is committed."""
    d = default_checkpoint()
    if d is None:
        return None
    return json.loads((d / "config.json").read_text())["clip_model"], str(d / CLIP_FILE)


def resolve_clip(model: str | None, pretrained: str | None) -> tuple[str, str | None]:
    """Command-line --model/--pretrained -> what to load. Neither given: the committed default CLIP when there is
    one, else the randomly initialised vla-tiny tower (said in the log: its predictions mean nothing)."""
    import logging

    if model is None and pretrained is None:
        found = default_clip()
        if found is not None:
            return found
        logging.getLogger("vla.clip").warning(
            "no default model in %s and no --model/--pretrained given: using a random vla-tiny", DEFAULT_DIR)
    if model is None and pretrained is not None:
        from vla.errors import UserError

        raise UserError(f"--pretrained {pretrained}: also give --model (its architecture, e.g. ViT-B-32)")
    return model or "vla-tiny", pretrained


def scene_classes(tasks) -> dict[str, str]:
    """task -> scene class name (words) for the scene-classification demo."""
    from vla.clip_pretrain import SCENE_CLASSES

    return {t: SCENE_CLASSES.get(t, t.removesuffix("-v3").replace("-", " ")) for t in tasks}


def folder_name(classname: str) -> str:
    """Class name -> image-folder name (`vla.imagefolder` maps '_' back to ' ')."""
    return classname.replace(" ", "_")


def render_scenes(tasks, seeds, out: str | os.PathLike, image_size: int = 128, progress: bool = False) -> Path:
    """First frame of each (task, seed) -> OUT/<scene class>/<task>_s<seed>.png (a labelled image folder).
    Existing images are kept (rerunning is cheap)."""
    from tqdm import tqdm

    from sim.env import MetaWorldRGBD

    out = Path(out)
    classes = scene_classes(tasks)
    env = None
    try:
        for task in tqdm(list(tasks), desc="scenes", unit="task", disable=not progress):
            folder = out / folder_name(classes[task])
            folder.mkdir(parents=True, exist_ok=True)
            for seed in seeds:
                path = folder / f"{task}_s{seed}.png"
                if path.exists():
                    continue
                if env is None:
                    env = MetaWorldRGBD(task=task, image_size=image_size, depth=False)
                obs, _ = env.reset(seed=int(seed), options={"task": task})
                _save_png(path, obs["rgb"][0])
    finally:
        if env is not None:
            env.close()
    return out


def _save_png(path: Path, rgb) -> None:
    """Atomically: the temp name ends in .tmp, which the image-folder scanner skips if a run dies mid-write."""
    from PIL import Image

    from vla.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb)).save(tmp, format="PNG")


def episode_scenes(data: str | os.PathLike, out: str | os.PathLike, per_task: int) -> Path:
    """First frames of up to `per_task` training episodes per task -> a labelled image folder (CoOp shots)."""

    from sim.dataset import NpzEpisodeSource

    src, out = NpzEpisodeSource(data), Path(out)
    eps = src.episodes()
    classes = scene_classes(sorted({e["task"] for e in eps}))
    count: dict[str, int] = {}
    for i, e in enumerate(eps):
        if count.get(e["task"], 0) >= per_task:
            continue
        count[e["task"]] = count.get(e["task"], 0) + 1
        folder = out / folder_name(classes[e["task"]])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{e['task']}_s{e['seed']}.png"
        if not path.exists():
            rgb, _ = src.frame(i, 0, [0])
            _save_png(path, rgb[0])
    return out


def export(policy_dir: Path, clip_file: Path, context_file: Path, classes: dict[str, str], out: Path,
           extra_files: dict[str, Path], card, execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the default-model directory atomically: fp16 policy + CLIP, scene context, and last the card,
    `card(bytes of the other files) -> text`; -> sizes. `execution` ({"horizon", "ensemble"}: how the model was
    evaluated) goes into its config, so runners and clients execute it the same way by default."""
    from safetensors.torch import load_file

    from vla.files import save_safetensors_atomic, write_json_atomic, write_text_atomic
    from vla.policy.checkpoint import write_dir_atomic

    def half(src: Path, dst: Path, meta: dict[str, str]) -> None:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
        save_safetensors_atomic(state, dst, metadata=meta)

    def write(tmp: Path) -> None:
        half(policy_dir / "model.safetensors", tmp / "model.safetensors", {"format": "vla.policy"})
        config = json.loads((policy_dir / "config.json").read_text())
        config["clip_pretrained"] = None  # self-contained: the CLIP weights are inside model.safetensors
        if execution is not None:
            config.update(exec_horizon=int(execution["horizon"]), exec_ensemble=bool(execution["ensemble"]))
        write_json_atomic(tmp / "config.json", config)
        for name in ("action_grid.json", "stats.json"):
            shutil.copyfile(policy_dir / name, tmp / name)
        half(clip_file, tmp / CLIP_FILE, {"model": config["clip_model"]})
        shutil.copyfile(context_file, tmp / CONTEXT_FILE)
        write_json_atomic(tmp / CLASSES_FILE, classes)
        for name, src in extra_files.items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        write_text_atomic(tmp / "MODEL_CARD.md", card(sum(f.stat().st_size for f in tmp.iterdir())))

    write_dir_atomic(out, write)
    sizes = {p.name: p.stat().st_size for p in sorted(Path(out).iterdir())}
    total = sum(sizes.values())
    if total > MAX_BYTES:
        raise RuntimeError(f"{out} is {total / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit")
    return {"bytes": total, "files": sizes}
