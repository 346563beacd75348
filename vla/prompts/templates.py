"""Zero-shot prompt templates: open_clip's sets by name, or a CLIP_benchmark-style JSON/text file.

Templates are strings with a `{c}` placeholder (CLIP_benchmark); open_clip's `{}` is accepted and converted.
"""

from __future__ import annotations

import json
from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from vla.errors import UserError

BUILTIN = {
    "openai": [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES],
    "simple": [t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES],
    "photo": ["a photo of a {c}."],
}


def normalize_template(template: str, source: str = "template") -> str:
    if "{c}" in template:
        return template
    if "{}" in template:
        return template.replace("{}", "{c}")
    raise UserError(f"{source}: template {template!r} has no class placeholder ({{c}} or {{}})")


def load_templates(spec: str, dataset: str | None = None) -> list[str]:
    """`spec` is a built-in name (openai, simple, photo) or a file.

    Files: JSON list, JSON object {dataset: [templates]} (CLIP_benchmark's custom template file; `dataset`
    picks the entry, else the only one), or plain text with one template per line.
    """
    if spec in BUILTIN:
        return list(BUILTIN[spec])
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--templates {spec!r} is neither one of {sorted(BUILTIN)} nor an existing file")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e})") from None
        if isinstance(data, dict):
            if dataset is not None and dataset in data:
                data = data[dataset]
            elif len(data) == 1:
                data = next(iter(data.values()))
            else:
                raise UserError(f"{path}: several template sets {sorted(data)}; name one with the dataset name")
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise UserError(f"{path}: expected a list of template strings")
        templates = data
    else:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not templates:
        raise UserError(f"{path}: no templates")
    return [normalize_template(t, str(path)) for t in templates]


def load_classnames(classes: str | None = None, classes_file: str | None = None) -> list[str]:
    """Class names from `--classes a,b,c` or a file (one per line, or a JSON list / {dataset: list})."""
    if classes is not None and classes_file is not None:
        raise UserError("give either --classes or --classes-file, not both")
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        source = "--classes"
    elif classes_file is not None:
        path = Path(classes_file)
        if not path.is_file():
            raise UserError(f"--classes-file {path} does not exist")
        text = path.read_text()
        source = str(path)
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: invalid JSON ({e})") from None
            if isinstance(data, dict) and len(data) == 1:
                data = next(iter(data.values()))
            if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
                raise UserError(f"{path}: expected a JSON list of class names")
            names = [c.strip() for c in data if c.strip()]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        return []
    if not names:
        raise UserError(f"{source}: the class list is empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{source}: duplicate class names {dupes}")
    return names
