"""Metrics on a hand-built logits table; template and class-name files."""

import json

import numpy as np
import pytest

from vla.errors import UserError
from vla.prompts.templates import load_classnames, load_templates
from vla.zeroshot import classification_metrics, confusion_matrix


def test_metrics_hand_computed():
    # 6 classes, 6 samples. Rows: logits; labels chosen so the answers are known by hand.
    logits = np.array([
        [9, 1, 2, 3, 4, 5],  # label 0: top1 right
        [9, 8, 7, 6, 5, 4],  # label 1: rank 2 -> top5 right, top1 wrong
        [1, 2, 9, 0, 0, 0],  # label 2: top1 right
        [6, 5, 4, 3, 2, 1],  # label 5: rank 6 -> wrong in top5
        [0, 0, 0, 0, 9, 1],  # label 4: right
        [0, 0, 0, 0, 9, 1],  # label 5: rank 2 -> top5 right
    ], dtype=float)
    labels = np.array([0, 1, 2, 5, 4, 5])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(3 / 6)
    assert m["acc5"] == pytest.approx(5 / 6)
    # per-class recall: c0 1, c1 0, c2 1, c4 1, c5 0/2 -> mean over the 5 present classes
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 1 + 1 + 0) / 5)


def test_acc5_null_with_few_classes():
    m = classification_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]))
    assert m["acc5"] is None and m["acc1"] == 0.5 and m["mean_per_class_recall"] == 0.5


def test_confusion_matrix():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_templates(tmp_path):
    assert len(load_templates("openai")) == 80 and len(load_templates("simple")) == 7
    assert all("{c}" in t for t in load_templates("openai"))
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"cifar10": ["a photo of a {c}.", "a {} drawing"]}))
    assert load_templates(str(f)) == ["a photo of a {c}.", "a {c} drawing"]
    f.write_text(json.dumps(["a photo"]))
    with pytest.raises(UserError, match="'a photo' has no class placeholder"):
        load_templates(str(f))
    with pytest.raises(UserError, match="neither"):
        load_templates("nope")


def test_classnames(tmp_path):
    assert load_classnames("cat, dog,bird") == ["cat", "dog", "bird"]
    with pytest.raises(UserError, match="empty"):
        load_classnames(" , ")
    f = tmp_path / "c.txt"
    f.write_text("cat\n\ndog\n")
    assert load_classnames(classes_file=str(f)) == ["cat", "dog"]
    f.write_text("cat\ncat\n")
    with pytest.raises(UserError, match="duplicate"):
        load_classnames(classes_file=str(f))


def test_unwritable_output_is_one_line(tmp_path):
    from vla.files import write_json_atomic

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write .*file/result.json"):
        write_json_atomic(blocker / "result.json", {})
