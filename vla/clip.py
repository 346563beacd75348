"""CLIP dual encoder over open_clip: loading from local files or tags, patch tokens, per-token text features.

Architectures are data (open_clip JSON configs; ours live in vla/model_configs) and weights are chosen apart:
`pretrained` is None (random init), a local file (.safetensors/.pt/.pth/.bin, loaded without unpickling code),
or an open_clip tag passed through for users with internet.

The text side is exposed below `encode_text` so CoOp can feed learned vectors in place of word embeddings:
`text_embeddings(ids) -> (B, T, W)` then `encode_text_embeddings(embeds, eot_index)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla.errors import UserError
from vla.files import load_state_dict

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class TextOutput:
    pooled: torch.Tensor  # (B, E) projected, un-normalised
    tokens: torch.Tensor  # (B, T, W) per-token features after ln_final
    mask: torch.Tensor  # (B, T) bool, True up to and including the end-of-text token


class ClipEncoder(nn.Module):
    """An open_clip model with the two towers opened up (patch tokens, per-token text features)."""

    def __init__(self, model: nn.Module, model_name: str, tokenizer: Any, preprocess: Any = None):
        super().__init__()
        self.model = model
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        text = model.text if hasattr(model, "text") else model
        if not hasattr(text, "token_embedding") or not hasattr(text, "positional_embedding"):
            raise UserError(f"model {model_name!r} has a text tower without token embeddings (HF text towers are "
                            "not supported for learned prompts)")
        self._text = text
        self.pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if self.pool_type not in ("argmax", "eos"):
            raise UserError(f"model {model_name!r}: text pooling {self.pool_type!r} is not supported")
        # Patch tokens are always returned (so `model.encode_image` gives (pooled, tokens) too); toggling the flag
        # per call would race between server threads.
        if hasattr(model.visual, "output_tokens"):
            model.visual.output_tokens = True

    # --- sizes -------------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def text_width(self) -> int:
        return int(self._text.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self._text.positional_embedding.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def patch_size(self) -> tuple[int, int]:
        size = self.model.visual.patch_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def vision_width(self) -> int:
        return int(self.model.visual.transformer.width)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # --- image tower -------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) normalised -> (pooled (B, E) projected, patch tokens (B, P, W) after ln_post)."""
        out = self.model.visual(images)
        if not isinstance(out, tuple):
            raise UserError(f"model {self.model_name!r}: the image tower does not expose patch tokens")
        pooled, tokens = out
        return pooled, tokens

    # --- text tower --------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos":
            return (ids == self._text.text_eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)  # the end-of-text id is the largest in the vocabulary

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> word embeddings (B, T, W), before positional embeddings."""
        return self._text.token_embedding(ids)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> TextOutput:
        """Run the text transformer on (B, T, W) embeddings; pool at `eot_index` (B,) and project."""
        text = self._text
        cast = text.transformer.get_cast_dtype()
        B, T, _ = embeddings.shape
        if T != self.context_length:
            raise ValueError(f"text embeddings have length {T}, the model expects {self.context_length}")
        x = embeddings.to(cast) + text.positional_embedding.to(cast)
        x = text.transformer(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)  # (B, T, W)
        pooled = x[torch.arange(B, device=x.device), eot_index]
        proj = text.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        mask = torch.arange(T, device=x.device)[None, :] <= eot_index[:, None]
        return TextOutput(pooled=pooled, tokens=x, mask=mask)

    def encode_text_ids(self, ids: torch.Tensor) -> TextOutput:
        return self.encode_text_embeddings(self.text_embeddings(ids), self.eot_index(ids))

    def encode_text(self, texts: list[str], device: torch.device | str | None = None) -> TextOutput:
        ids = self.tokenize(texts).to(device or self._text.token_embedding.weight.device)
        return self.encode_text_ids(ids)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive logits (image->text, text->image) for training or zero-shot use."""
        img = F.normalize(self.encode_image(images)[0], dim=-1)
        txt = F.normalize(self.encode_text_ids(texts).pooled, dim=-1)
        logits = self.logit_scale * img @ txt.T
        return logits, logits.T


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs every creation step on the root logger (and warns "no pretrained weights" even when we load
    a local file right after): keep that out of our users' output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def is_local_weights(pretrained: str | os.PathLike | None) -> bool:
    if pretrained is None:
        return False
    p = str(pretrained)
    return p.endswith(WEIGHT_SUFFIXES) or os.sep in p or Path(p).exists()


def resolve_model_name(model_name: str, pretrained: str | None) -> str:
    """OpenAI weights were trained with QuickGELU: pick the `-quickgelu` config so accuracy does not drop."""
    if model_name not in open_clip.list_models():
        raise UserError(
            f"unknown model {model_name!r}; choose one of open_clip's models (`open_clip.list_models()`) or ours: "
            f"{sorted(p.stem for p in CONFIG_DIR.glob('*.json'))}"
        )
    looks_openai = pretrained is not None and "openai" in Path(str(pretrained)).name.lower()
    if looks_openai and not model_name.endswith("-quickgelu"):
        alt = f"{model_name}-quickgelu"
        if alt in open_clip.list_models():
            log.warning("OpenAI weights need QuickGELU: using %s instead of %s", alt, model_name)
            return alt
        log.warning("OpenAI weights need QuickGELU but %s has no -quickgelu config; accuracy may drop", model_name)
    return model_name


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here ('auto': CUDA when available, else CPU), or a UserError naming the value."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: CUDA is not available on this machine (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def load_clip(
    model_name: str = "vla-tiny",
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    weights_follow: bool = False,
) -> ClipEncoder:
    """Build an open_clip model by name and load weights from a local file, a tag, or nothing (random).

    The model is returned in eval mode; local files are loaded strictly (a key mismatch names the keys).
    weights_follow: the caller loads the weights afterwards (a policy checkpoint), so a random init is not logged.
    """
    device = check_device(device)
    model_name = resolve_model_name(model_name, None if pretrained is None else str(pretrained))
    local = is_local_weights(pretrained)
    tag = None if (pretrained is None or local) else str(pretrained)
    try:
        # Random init is seeded, so "no weights" means the same weights in every process (a context learned on
        # a random tower still fits it when reloaded).
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=tag, precision=precision, device=device
            )
    except RuntimeError as e:
        if tag is not None:
            raise UserError(f"could not get weights {tag!r} for {model_name!r} (no hub access?): {e}") from None
        raise
    if local:
        state = load_state_dict(pretrained)
        state = open_clip.factory.convert_state_dict(model, state)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{pretrained} does not match model {model_name!r}: missing keys {list(missing)[:5]}, "
                f"unexpected keys {list(unexpected)[:5]} (is --model right?)"
            )
        model.to(device)
    elif pretrained is None and not weights_follow:
        log.info("%s: no weights given, random initialisation (seed 0)", model_name)
    model.eval()
    with _quiet_root_logger():
        tokenizer = open_clip.get_tokenizer(model_name)
    return ClipEncoder(model, model_name, tokenizer, preprocess)
