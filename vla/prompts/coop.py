"""CoOp / CoCoOp: learned prompt context for a frozen CLIP text tower.

Prompt = [SOS] ctx_1..ctx_M [class tokens] . [EOS] pad (class position `end`; `front` and `middle` move the
class tokens). Only the context (and CoCoOp's meta-net) is trained; CLIP stays frozen in eval mode.

Prompts are tokenised once with placeholder words where the context goes; the context vectors are then written
into those positions of the word embeddings (`_assemble`), so the same code serves class names (classification)
and arbitrary robot instructions (`encode_texts`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from vla.clip import ClipEncoder, TextOutput
from vla.errors import UserError
from vla.files import save_safetensors_atomic

POSITIONS = ("end", "middle", "front")
FORMAT_VERSION = 1


class PromptLearner(nn.Module):
    """Learned context vectors for a CLIP text tower.

    clip_model: a `vla.clip.ClipEncoder` or a raw open_clip model (then `tokenizer` is required).
    ctx_init: words whose embeddings initialise the context (sets n_ctx to their token count), e.g. "a photo of a";
    otherwise n_ctx vectors drawn from N(0, 0.02). csc: one context per class instead of one shared context.
    """

    def __init__(
        self,
        clip_model,
        tokenizer=None,
        classnames: list[str] | None = None,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_token_position: str = "end",
        cocoop: bool = False,
    ):
        super().__init__()
        if not isinstance(clip_model, ClipEncoder):
            if tokenizer is None:
                raise ValueError("a raw open_clip model needs its tokenizer")
            clip_model = ClipEncoder(clip_model, type(clip_model).__name__, tokenizer)
        if class_token_position not in POSITIONS:
            raise UserError(f"class_token_position must be one of {POSITIONS}, got {class_token_position!r}")
        classnames = [c.replace("_", " ") for c in (classnames or [])]
        if csc and not classnames:
            raise UserError("class-specific context (csc) needs class names")
        if csc and cocoop:
            raise UserError("CoCoOp uses one shared context; do not combine it with csc")
        # Frozen CLIP: kept out of this module's parameters/state dict, always in eval mode.
        object.__setattr__(self, "clip", clip_model)
        for p in clip_model.parameters():
            p.requires_grad_(False)
        clip_model.eval()

        W = clip_model.text_width
        device = clip_model.model.logit_scale.device
        if ctx_init:
            ctx_init = ctx_init.replace("_", " ").strip()
            ids = clip_model.tokenize([ctx_init]).to(device)
            n_ctx = int(clip_model.eot_index(ids)[0]) - 1
            if n_ctx < 1:
                raise UserError(f"ctx_init {ctx_init!r} has no tokens")
            with torch.no_grad():
                init = clip_model.text_embeddings(ids)[0, 1 : 1 + n_ctx].float()  # (M, W)
            ctx = init.repeat(len(classnames), 1, 1) if csc else init
        else:
            if n_ctx < 1:
                raise UserError(f"n_ctx must be >= 1, got {n_ctx}")
            ctx = torch.empty(len(classnames), n_ctx, W) if csc else torch.empty(n_ctx, W)
            nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx.to(device))  # (M, W) or (C, M, W)
        self.n_ctx, self.csc, self.ctx_init = n_ctx, csc, ctx_init
        self.class_token_position = class_token_position
        self.classnames = classnames
        self.meta_net = None
        if cocoop:
            E = clip_model.embed_dim
            hidden = max(E // 16, 1)
            self.meta_net = nn.Sequential(nn.Linear(E, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, W)).to(device)
        if classnames:
            ids, pos = self._tokenize_prompts(classnames, class_token_position)
            self.register_buffer("prompt_ids", ids, persistent=False)  # (C, T)
            self.register_buffer("ctx_positions", pos, persistent=False)  # (C, M)

    # --- prompt construction -----------------------------------------------------------------------------
    def _tokenize_prompts(self, names: list[str], position: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of the prompts with placeholder context, and where the context goes: (C, T), (C, M)."""
        clip, M = self.clip, self.n_ctx
        device = self.ctx.device
        name_len = clip.eot_index(clip.tokenize(names)) - 1  # (C,) tokens per name
        ph = " ".join(["X"] * M)
        h = M // 2
        if position == "end":
            texts = [f"{ph} {n}." for n in names]
        elif position == "front":
            texts = [f"{n} {ph}." for n in names]
        else:
            texts = [f"{' '.join(['X'] * h)} {n} {' '.join(['X'] * (M - h))}." for n in names]
        ids = clip.tokenize(texts)
        need = 1 + M + name_len + 2  # SOS + ctx + name + '.' + EOS
        too_long = [(n, int(k)) for n, k in zip(names, need) if k > clip.context_length]
        if too_long:
            raise UserError(
                f"prompt too long for the text tower (context length {clip.context_length}, n_ctx {M}): "
                f"{too_long[:3]}"
            )
        j = torch.arange(M)[None, :]
        if position == "end":
            pos = 1 + j.expand(len(names), M)
        elif position == "front":
            pos = 1 + name_len[:, None] + j
        else:
            pos = torch.where(j < h, 1 + j, 1 + j + name_len[:, None])
        return ids.to(device), pos.to(device)

    def _assemble(self, ids: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Word embeddings of `ids` (N, T) with `ctx` (N, M, W) written at `pos` (N, M) -> (N, T, W)."""
        with torch.no_grad():
            base = self.clip.text_embeddings(ids)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(pos)
        return base.to(ctx.dtype).index_put((rows, pos), ctx)

    def _class_ctx(self, n: int, image_features: torch.Tensor | None) -> torch.Tensor:
        """Context per prompt: (n, M, W), or (B, n, M, W) for CoCoOp."""
        ctx = self.ctx if self.csc else self.ctx[None].expand(n, -1, -1)
        if self.meta_net is None:
            return ctx
        if image_features is None:
            raise ValueError("CoCoOp needs image features")
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # (B, W)
        return ctx[None] + bias[:, None, None, :]  # (B, n, M, W)

    # --- features ----------------------------------------------------------------------------------------
    def text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Projected, un-normalised class text features: (C, E), or (B, C, E) with CoCoOp image features."""
        if not self.classnames:
            raise ValueError("this PromptLearner has no class names")
        ids, pos = self.prompt_ids, self.ctx_positions
        C = ids.shape[0]
        ctx = self._class_ctx(C, image_features)
        eot = self.clip.eot_index(ids)
        if ctx.ndim == 3:
            return self.clip.encode_text_embeddings(self._assemble(ids, pos, ctx), eot).pooled
        B = ctx.shape[0]
        emb = self._assemble(ids.repeat(B, 1), pos.repeat(B, 1), ctx.reshape(B * C, self.n_ctx, -1))
        return self.clip.encode_text_embeddings(emb, eot.repeat(B)).pooled.reshape(B, C, -1)

    def check_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and context positions for free-form texts; UserError for empty or too-long ones."""
        texts = [t.strip().rstrip(".") for t in texts]
        if any(not t for t in texts):
            raise UserError("empty text")
        return self._tokenize_prompts(texts, "end")

    def encode_texts(self, texts: list[str]) -> TextOutput:
        """Free-form texts (robot instructions) behind the shared context: [SOS] ctx text . [EOS]."""
        if self.csc:
            raise ValueError("class-specific context cannot encode free-form text")
        if self.meta_net is not None:
            raise ValueError("CoCoOp context depends on the image; use text_features(image_features)")
        ids, pos = self.check_texts(texts)
        ctx = self.ctx[None].expand(len(texts), -1, -1)
        return self.clip.encode_text_embeddings(self._assemble(ids, pos, ctx), self.clip.eot_index(ids))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Classification logits (B, C) for preprocessed images, as CoOp's CustomCLIP computes them."""
        with torch.no_grad():
            img = self.clip.encode_image(images)[0]
        img = img / img.norm(dim=-1, keepdim=True)
        txt = self.text_features(img if self.meta_net is not None else None)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        if txt.ndim == 2:
            return self.clip.logit_scale * img @ txt.T
        return self.clip.logit_scale * torch.einsum("be,bce->bc", img, txt)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # CLIP never leaves eval mode (dropout/batch-norm stay frozen)
        return self

    # --- persistence -------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.clip.model_name,
            "text_width": self.clip.text_width,
            "classnames": self.classnames,
            "n_ctx": self.n_ctx,
            "ctx_init": self.ctx_init,
            "csc": self.csc,
            "class_token_position": self.class_token_position,
            "cocoop": self.meta_net is not None,
        }

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Context (+ meta-net) as safetensors; metadata as JSON strings in the safetensors header."""
        meta = {**self.metadata(), **(extra or {})}
        tensors = {k: v for k, v in self.state_dict().items()}
        save_safetensors_atomic(tensors, path, metadata={"coop": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, clip_model: ClipEncoder, classnames: list[str] | None = None) -> PromptLearner:
        """Load a saved context for `clip_model`; refuse with the differing fields if it does not fit."""
        meta, tensors = read_context_file(path)
        problems = []
        if meta["model_name"] != clip_model.model_name:
            problems.append(f"model_name: file {meta['model_name']!r} vs model {clip_model.model_name!r}")
        if meta["text_width"] != clip_model.text_width:
            problems.append(f"text_width: file {meta['text_width']} vs model {clip_model.text_width}")
        names = meta["classnames"] if classnames is None else [c.replace("_", " ") for c in classnames]
        if meta["csc"] and names != meta["classnames"]:
            problems.append(f"classnames: class-specific context was learned for {meta['classnames']}, got {names}")
        if problems:
            raise UserError(f"{path} does not fit this model: " + "; ".join(problems))
        learner = cls(
            clip_model,
            classnames=names,
            n_ctx=meta["n_ctx"],
            csc=meta["csc"],
            class_token_position=meta["class_token_position"],
            cocoop=meta["cocoop"],
        )
        learner.ctx_init = meta.get("ctx_init")
        learner.load_state_dict(tensors, strict=True)
        return learner


def read_context_file(path: str | Path) -> tuple[dict, dict]:
    """Metadata and tensors of a saved context, with clear errors for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"context file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a safetensors context file: {e}") from None
    if "coop" not in header:
        raise UserError(f"{path} has no CoOp metadata (was it written by `vla coop train`?)")
    meta = json.loads(header["coop"])
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: format version {meta['format_version']} is newer than this code ({FORMAT_VERSION})")
    return meta, tensors
