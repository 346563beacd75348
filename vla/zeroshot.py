"""Zero-shot classification: class text embeddings (templates or CoOp context), image features, metrics, reports.

Results follow CLIP_benchmark's shape: `{"dataset", "model", "pretrained", "task", "metrics": {"acc1", "acc5",
"mean_per_class_recall"}}`; acc5 is null with fewer than 5 classes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla.clip import ClipEncoder
from vla.files import atomic_path, write_json_atomic, write_text_atomic
from vla.imagefolder import ImageFolder, load_image


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """acc1, acc5 (None with < 5 classes) and the mean over present classes of per-class recall."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    n, c = logits.shape
    if n == 0:
        raise ValueError("no samples")
    order = np.argsort(-logits, axis=1, kind="stable")
    acc1 = float(np.mean(order[:, 0] == labels))
    acc5 = float(np.mean((order[:, :5] == labels[:, None]).any(axis=1))) if c >= 5 else None
    recalls = [float(np.mean(order[labels == k, 0] == k)) for k in np.unique(labels)]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


@torch.no_grad()
def template_classifier(clip: ClipEncoder, classnames: list[str], templates: list[str], device="cpu") -> torch.Tensor:
    """(E, C) normalised class embeddings: mean of normalised template embeddings, renormalised (open_clip's)."""
    from open_clip import build_zero_shot_classifier

    fill = [lambda c, t=t: t.replace("{c}", c) for t in templates]  # ours use {c}; open_clip formats with {}
    return build_zero_shot_classifier(
        clip.model, clip.tokenizer, [c.replace("_", " ") for c in classnames], fill, device=device
    )


@torch.no_grad()
def encode_images(
    clip: ClipEncoder, paths: list[Path], batch_size: int = 64, device="cpu", progress: bool = True
) -> torch.Tensor:
    """Normalised pooled image features (N, E) for image files, with a progress bar."""
    feats = []
    batches = range(0, len(paths), batch_size)
    for start in tqdm(batches, desc="images", unit="batch", disable=not progress or len(batches) < 2):
        x = torch.stack([load_image(p, clip.preprocess) for p in paths[start : start + batch_size]]).to(device)
        feats.append(F.normalize(clip.encode_image(x)[0].float(), dim=-1).cpu())
    return torch.cat(feats)


def write_reports(
    out_json: Path,
    folder: ImageFolder,
    probs: np.ndarray,
    info: dict,
) -> dict:
    """Write result JSON, per-image CSV and (with labels) a confusion-matrix PNG next to it. Returns the result."""
    out_json = Path(out_json)
    stem = out_json.with_suffix("")
    names = folder.classnames
    order = np.argsort(-probs, axis=1, kind="stable")
    k = min(5, len(names))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "label", "prediction", "probability"] + [f"top{i + 1}" for i in range(k)])
    for i, path in enumerate(folder.paths):
        label = names[folder.labels[i]] if folder.labels is not None else ""
        top = [names[j] for j in order[i, :k]]
        w.writerow([str(path), label, top[0], f"{probs[i, order[i, 0]]:.6f}"] + top)
    csv_path = Path(f"{stem}_predictions.csv")
    write_text_atomic(csv_path, buf.getvalue())
    result = {**info, "task": "zeroshot_classification", "n_images": len(folder.paths), "classnames": names}
    result["files"] = {"predictions": str(csv_path)}
    if folder.labels is not None:
        labels = np.asarray(folder.labels)
        result["metrics"] = classification_metrics(probs, labels)
        cm = confusion_matrix(order[:, 0], labels, len(names))
        png = Path(f"{stem}_confusion.png")
        plot_confusion(cm, names, png, title=f"{info.get('model', '')} acc1={result['metrics']['acc1']:.3f}")
        result["files"]["confusion_matrix"] = str(png)
    else:
        result["metrics"] = None
    write_json_atomic(out_json, result)
    return result


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(max(4.0, 0.45 * n + 2), 24)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@torch.no_grad()
def class_probabilities(
    clip: ClipEncoder,
    image_features: torch.Tensor,
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
    learner=None,
    batch_size: int = 256,
) -> np.ndarray:
    """Softmax over classes (N, C) from normalised image features, with templates or a PromptLearner."""
    scale = clip.logit_scale.float().cpu()
    if learner is None:
        weights = template_classifier(clip, classnames, templates).float().cpu()  # (E, C)
        return torch.softmax(scale * image_features @ weights, dim=-1).numpy()
    learner.eval()
    if learner.meta_net is None:
        txt = F.normalize(learner.text_features().float().cpu(), dim=-1)  # (C, E)
        return torch.softmax(scale * image_features @ txt.T, dim=-1).numpy()
    out = []
    for start in range(0, len(image_features), batch_size):
        img = image_features[start : start + batch_size]
        dev = learner.ctx.device
        txt = F.normalize(learner.text_features(img.to(dev)).float().cpu(), dim=-1)  # (B, C, E)
        out.append(torch.softmax(scale * torch.einsum("be,bce->bc", img, txt), dim=-1))
    return torch.cat(out).numpy()
