"""Image folders for classification: `DIR/<class>/*.png` (labelled) or `DIR/*.png` (prediction only)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vla.errors import UserError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageFolder:
    paths: list[Path]
    labels: list[int] | None  # None for a flat folder
    classnames: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_image_folder(root: str | Path, classnames: list[str] | None = None) -> ImageFolder:
    """List images; class subfolders give labels, mapped by name when they match `classnames`, else by order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images {root} is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        paths = _images_in(root)
        if not paths:
            raise UserError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if not classnames:
            raise UserError(f"{root} has no class subfolders: give the classes with --classes or --classes-file")
        return ImageFolder(paths, None, list(classnames))
    folder_names = [d.name.replace("_", " ") for d in subdirs]
    if not classnames:
        classnames = folder_names
        index = {d: i for i, d in enumerate(subdirs)}
    elif all(n in classnames for n in folder_names):
        index = {d: classnames.index(n) for d, n in zip(subdirs, folder_names)}
    elif len(classnames) == len(subdirs):
        log.info("class folders %s do not match the class names; mapping them in sorted order", folder_names[:5])
        index = {d: i for i, d in enumerate(subdirs)}
    else:
        raise UserError(
            f"{root} has {len(subdirs)} class folders {folder_names[:5]}... but {len(classnames)} class names were "
            "given, and the folder names are not among them"
        )
    paths, labels = [], []
    for d in subdirs:
        for p in _images_in(d):
            paths.append(p)
            labels.append(index[d])
    if not paths:
        raise UserError(f"the class folders under {root} hold no images")
    return ImageFolder(paths, labels, list(classnames))


def few_shot(folder: ImageFolder, shots: int, seed: int) -> ImageFolder:
    """K images per class, sampled reproducibly (same seed, same images)."""
    if folder.labels is None:
        raise UserError("few-shot training needs a labelled folder (class subfolders)")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(folder.labels):
        by_class.setdefault(y, []).append(i)
    short = {folder.classnames[c]: len(v) for c, v in by_class.items() if len(v) < shots}
    if short:
        log.warning("fewer than %d images for %s: using all of them", shots, short)
    keep = sorted(i for idx in by_class.values() for i in rng.sample(idx, min(shots, len(idx))))
    return ImageFolder([folder.paths[i] for i in keep], [folder.labels[i] for i in keep], folder.classnames)


def load_image(path: Path, preprocess) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            return preprocess(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
