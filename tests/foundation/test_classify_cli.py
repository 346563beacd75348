"""`vla classify` and `vla coop` end to end on a generated image folder with the tiny random model."""

import csv
import json

import pytest

from vla.cli import main

from .conftest import CLASSES as COLOURS

TINY = ["--model", "vla-tiny"]  # explicit: without --model the commands load the committed default CLIP


def test_classify_writes_clip_benchmark_result(colour_folder, tmp_path, capsys):
    out = tmp_path / "res" / "result.json"
    assert main(["classify", *TINY, "--images", str(colour_folder), "--output", str(out), "--templates", "simple"]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "zeroshot_classification"
    assert result["classnames"] == sorted(COLOURS)
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    rows = list(csv.DictReader(open(tmp_path / "res" / "result_predictions.csv")))
    assert len(rows) == 36 and {r["label"] for r in rows} == set(COLOURS)
    assert all(r["prediction"] in COLOURS for r in rows)
    # acc1 in the JSON is the fraction of CSV rows whose prediction is the label
    assert result["metrics"]["acc1"] == pytest.approx(sum(r["label"] == r["prediction"] for r in rows) / 36)
    png = tmp_path / "res" / "result_confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "acc1" in capsys.readouterr().out


def test_flat_folder_predicts_only(colour_folder, tmp_path):
    flat = colour_folder / "red"
    out = tmp_path / "flat.json"
    assert main(["classify", *TINY, "--images", str(flat), "--classes", "red,green,blue", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"] is None and result["n_images"] == 6
    rows = list(csv.DictReader(open(tmp_path / "flat_predictions.csv")))
    assert [r["label"] for r in rows] == [""] * 6


@pytest.mark.parametrize("argv,message", [
    (["--images", "/nonexistent/dir"], "/nonexistent/dir is not a folder"),
    (["--classes", " , "], "class list is empty"),
    (["--templates", "TEMPLATE_FILE"], "has no class placeholder"),
    (["--images", "BROKEN"], "cannot read image .*broken.png"),
])
def test_bad_inputs_give_one_line_errors(colour_folder, tmp_path, capsys, argv, message):
    import re

    tfile = tmp_path / "t.json"
    tfile.write_text(json.dumps(["a photo of something"]))
    broken = tmp_path / "broken"
    (broken / "red").mkdir(parents=True)
    (broken / "red" / "broken.png").write_bytes(b"not a png")
    argv = [a.replace("TEMPLATE_FILE", str(tfile)).replace("BROKEN", str(broken)) for a in argv]
    if "--images" not in argv:
        argv = ["--images", str(colour_folder)] + argv
    assert main(["classify", *TINY, *argv, "--output", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vla classify: error:")
    assert re.search(message, err[0])


def test_coop_train_then_eval_beats_templates(colour_folder, tmp_path):
    ctx = tmp_path / "ctx.safetensors"
    assert main(["coop", "train", *TINY, "--images", str(colour_folder), "--shots", "2", "--csc", "--n-ctx", "4",
                 "--epochs", "25", "--seed", "3", "--out", str(ctx)]) == 0
    assert ctx.exists() and (tmp_path / "ctx.history.json").exists()
    coop_out, tmpl_out = tmp_path / "coop.json", tmp_path / "tmpl.json"
    images = ["--images", str(colour_folder)]
    assert main(["coop", "eval", *TINY, *images, "--coop", str(ctx), "--output", str(coop_out)]) == 0
    assert main(["classify", *TINY, *images, "--templates", "simple", "--output", str(tmpl_out)]) == 0
    coop_acc = json.loads(coop_out.read_text())["metrics"]["acc1"]
    tmpl_acc = json.loads(tmpl_out.read_text())["metrics"]["acc1"]
    # Random tower: templates are near chance (1/6); per-class context learned from 2 shots separates colours.
    assert coop_acc >= 0.8 and coop_acc > tmpl_acc


def test_model_defaults_to_committed_clip(fake_default_model):
    from vla import default_model
    from vla.errors import UserError

    assert default_model.resolve_clip(None, None) == ("vla-tiny", None)  # nothing committed: random tiny tower
    assert default_model.resolve_clip("ViT-B-32", "w.safetensors") == ("ViT-B-32", "w.safetensors")
    with pytest.raises(UserError, match="--pretrained w.safetensors: also give --model"):
        default_model.resolve_clip(None, "w.safetensors")
    folder = fake_default_model()
    assert default_model.resolve_clip(None, None) == ("vla-small", str(folder / default_model.CLIP_FILE))
    assert default_model.resolve_clip("vla-tiny", None) == ("vla-tiny", None)
