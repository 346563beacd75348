"""`vla classify`: zero-shot classification of an image folder with templates or learned CoOp context."""

from __future__ import annotations

import argparse

DEFAULT_OUTPUT = "out/classify/result.json"


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="open_clip architecture name or one of ours (vla-tiny, vla-small); with --pretrained also "
                        "omitted: the committed default CLIP (vla/assets/default)")
    p.add_argument("--pretrained", default=None,
                   help="weights: a local .safetensors/.pt/.pth/.bin file, or an open_clip tag (needs internet); "
                        "with --model alone: random init")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True,
                   help="image folder: DIR/<class>/*.png evaluates against labels; a flat DIR only predicts")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", help="comma-separated class names")
    g.add_argument("--classes-file", help="class names, one per line or a JSON list")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")


def register(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot image classification (CLIP_benchmark-style results)",
                       description=__doc__)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--templates", default="openai",
                   help="openai (80) | simple (7) | photo (1) | FILE (JSON list, {dataset: [...]}, or one per line; "
                        "{c} or {} marks the class name)")
    p.add_argument("--coop", default=None, help="learned context file from `vla coop train` (replaces templates)")
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help=f"result JSON; predictions CSV and confusion PNG go beside it (default {DEFAULT_OUTPUT})")
    p.add_argument("--dataset-name", default=None, help="name recorded in the result (default: the folder name)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from vla.clip import load_clip
    from vla.default_model import resolve_clip
    from vla.errors import UserError
    from vla.imagefolder import scan_image_folder
    from vla.prompts.coop import PromptLearner
    from vla.prompts.templates import load_classnames, load_templates
    from vla.zeroshot import class_probabilities, encode_images, write_reports

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    classnames = load_classnames(args.classes, args.classes_file)
    templates = None if args.coop else load_templates(args.templates, dataset=args.dataset_name)
    folder = scan_image_folder(args.images, classnames or None)
    args.model, args.pretrained = resolve_clip(args.model, args.pretrained)
    clip = load_clip(args.model, args.pretrained, device=args.device)
    learner = PromptLearner.load(args.coop, clip, folder.classnames).to(args.device) if args.coop else None
    feats = encode_images(clip, folder.paths, args.batch_size, args.device)
    probs = class_probabilities(clip, feats, folder.classnames, templates, learner)
    info = {
        "dataset": args.dataset_name or Path(args.images).resolve().name,
        "model": args.model,
        "pretrained": args.pretrained,
        "prompts": f"coop:{args.coop}" if args.coop else f"templates:{args.templates}",
    }
    result = write_reports(Path(args.output), folder, probs, info)
    m = result["metrics"]
    if m is None:
        print(f"predicted {len(folder)} images -> {result['files']['predictions']}")
    else:
        acc5 = "n/a" if m["acc5"] is None else f"{m['acc5']:.4f}"
        print(f"{info['dataset']}: {len(folder)} images, {len(folder.classnames)} classes: acc1 {m['acc1']:.4f}  "
              f"acc5 {acc5}  mean per-class recall {m['mean_per_class_recall']:.4f} ({info['prompts']})")
    print(f"results: {args.output}")
    return 0
