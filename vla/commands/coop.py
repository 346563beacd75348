"""`vla coop train|eval`: learn CoOp/CoCoOp prompt context from K shots per class, or evaluate a learned one."""

from __future__ import annotations

from vla.commands.classify import DEFAULT_OUTPUT, add_data_args, add_model_args

DEFAULT_CONTEXT = "out/coop/context.safetensors"


def register(sub) -> None:
    p = sub.add_parser("coop", help="learn or evaluate CoOp prompt context", description=__doc__)
    coop_sub = p.add_subparsers(dest="coop_command", metavar="{train,eval}", required=True)

    t = coop_sub.add_parser("train", help="learn context from a labelled image folder (K shots per class)")
    add_model_args(t)
    add_data_args(t)
    t.set_defaults(batch_size=32)
    t.add_argument("--shots", type=int, default=16, help="images per class (default 16)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--n-ctx", type=int, default=16, help="context length M (ignored with --ctx-init)")
    t.add_argument("--ctx-init", default=None, help='initialise the context from words, e.g. "a photo of a"')
    t.add_argument("--csc", action="store_true", help="class-specific context (one set per class)")
    t.add_argument("--position", choices=["end", "middle", "front"], default="end", help="class token position")
    t.add_argument("--cocoop", action="store_true", help="CoCoOp: image-conditioned context (meta-net)")
    t.add_argument("--epochs", type=int, default=None, help="default: 50 (1 shot), 100 (2-4), 200 (8+)")
    t.add_argument("--lr", type=float, default=0.002)
    t.add_argument("--out", default=DEFAULT_CONTEXT, help=f"context file (default {DEFAULT_CONTEXT})")
    t.set_defaults(func=run_train)

    e = coop_sub.add_parser("eval", help="classify an image folder with a learned context")
    add_model_args(e)
    add_data_args(e)
    e.add_argument("--coop", required=True, help="context file from `vla coop train`")
    e.add_argument("--output", default=DEFAULT_OUTPUT)
    e.add_argument("--dataset-name", default=None)
    e.set_defaults(func=run_eval, templates=None)


def run_train(args) -> int:
    import json
    from pathlib import Path

    import torch

    from vla.clip import load_clip
    from vla.default_model import resolve_clip
    from vla.errors import UserError
    from vla.files import write_json_atomic
    from vla.imagefolder import few_shot, scan_image_folder
    from vla.prompts.coop import PromptLearner
    from vla.prompts.coop_train import default_epochs, train_prompts
    from vla.prompts.templates import load_classnames
    from vla.zeroshot import encode_images

    if args.shots < 1:
        raise UserError(f"--shots must be >= 1, got {args.shots}")
    folder = scan_image_folder(args.images, load_classnames(args.classes, args.classes_file) or None)
    if folder.labels is None:
        raise UserError(f"{args.images}: training needs class subfolders (DIR/<class>/*.png)")
    shots = few_shot(folder, args.shots, args.seed)
    args.model, args.pretrained = resolve_clip(args.model, args.pretrained)
    clip = load_clip(args.model, args.pretrained, device=args.device)
    torch.manual_seed(args.seed)
    learner = PromptLearner(clip, classnames=folder.classnames, n_ctx=args.n_ctx, ctx_init=args.ctx_init,
                            csc=args.csc, class_token_position=args.position, cocoop=args.cocoop)
    feats = encode_images(clip, shots.paths, args.batch_size, args.device)
    epochs = args.epochs or default_epochs(args.shots)
    history = train_prompts(learner, feats, torch.tensor(shots.labels), epochs=epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    extra = {"shots": args.shots, "seed": args.seed, "epochs": epochs, "pretrained": args.pretrained,
             "final_loss": history[-1]["loss"], "final_train_acc": history[-1]["train_acc"]}
    learner.save(args.out, extra=extra)
    write_json_atomic(Path(args.out).with_suffix(".history.json"), history)
    print(f"trained {sum(p.numel() for p in learner.parameters())} context parameters on {len(shots)} images "
          f"({args.shots} shots x {len(folder.classnames)} classes, {epochs} epochs): "
          f"final loss {history[-1]['loss']:.4f}, train acc {history[-1]['train_acc']:.3f}")
    print(f"context: {args.out}")
    print(json.dumps(extra))
    return 0


def run_eval(args) -> int:
    from vla.commands.classify import run

    return run(args)
