"""Policy architecture as data: a validated dataclass, JSON in and out, with `tiny()` and `default()` presets.

Cheap to import (no torch at import time): the CLI and the serving layer read configs without building a
model. Every check raises `UserError` naming the field and the bad value, so a hand-edited `config.json`
fails loudly at load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vla.errors import UserError

FORMAT, VERSION = "vla.policy_config", 1
LAYER_KINDS = ("ponet", "attn")
ACTION_HEADS = ("transformer", "mlp")
MLP_INSTRUCTIONS = ("text", "match")
TOKEN_DECODINGS = ("argmax", "expectation")
ACTION_OUTPUTS = ("tokens", "continuous")
ACTION_KINDS = ("translation", "rotation", "gripper", "joint")
PRESETS = ("tiny", "default")


@dataclass
class PolicyConfig:
    """Architecture of a `VLAPolicy`; the fitted action grid and normalisation stats live beside it.

    image_size None means the CLIP tower's own input size (filled in when the policy is built, then saved).
    layers: the head's stack, in order, of "ponet" (linear-cost global mixing) and "attn" (full attention).
    grid_bins: per action kind, e.g. {"translation": [16, 32, 8]} (defaults: SpatialVLA's grids).
    """

    clip_model: str = "vla-tiny"
    clip_pretrained: str | None = None
    cameras: tuple[str, ...] = ("corner",)
    image_size: tuple[int, int] | None = None
    state_dim: int = 4
    action_dim: int = 4
    action_layout: Any = "metaworld"
    grid_bins: dict[str, list[int]] | None = None
    grid_min_sigma: float = 0.5
    chunk_len: int = 4
    width: int = 128
    heads: int = 4
    layers: tuple[str, ...] = ("ponet", "attn")
    ffn_mult: int = 2
    ponet_window: int = 1
    n_ctx: int = 4
    text_finetune: bool = False
    vision_trainable: bool = True
    ego3d: bool = True
    ego3d_reso: int = 2
    ego3d_centre: tuple[float, float, float] = (0.0, 0.0, 2.0)
    ego3d_scale: float = 2.0
    control_hz: float | None = None
    # Training only: the action queries also regress this many privileged values per sample (object and goal
    # positions in simulation, `privileged` in the dataset) -- an auxiliary loss that teaches the vision path to
    # locate what the actions depend on. The true values are never an input; 0 = off.
    privileged_dim: int = 0
    # Spatial-softmax keypoints per camera (vla.policy.keypoints): a convolutional path that locates small
    # things at the camera's resolution; each keypoint is one head token. 0 = off.
    keypoints: int = 0
    keypoint_channels: int = 32
    # Feed the keypoint readout's position estimates (privileged_dim values, from pixels) to the head with the
    # proprio state, so that "goal - hand" is linear in one token (keypoints with privileged_dim only).
    keypoint_positions: bool = False
    # Whether the CLIP tower's patch tokens enter the head. False (only with keypoints) skips the image tower
    # at inference; Ego3D, which encodes patches, then has nothing to do and must be off.
    vision_tokens: bool = True
    # What turns the inputs into action tokens. "transformer": the PoNet/attention stack over all tokens (patches,
    # state, queries, keypoints, instruction). "mlp": an MLP on [proprio state, the keypoint readout's position
    # estimates, the mean instruction token] -- what the position-from-pixels experiments showed learns the
    # actions (docs/policy_experiments.md, rows S-est and M1); keypoints and privileged_dim only, no patch tokens.
    action_head: str = "transformer"
    mlp_width: int = 256
    # How the MLP head reads the instruction. "text": the mean CLIP text-tower token (CoOp context), projected.
    # "match": a soft match to the instructions of the training data by IDF-weighted CLIP word embeddings (words
    # never seen in training weigh nothing), one weight per known instruction (vla.policy.instructions); it
    # generalises to unseen wording better than the small CLIP's text tower (docs/policy_experiments.md, V rows).
    mlp_instruction: str = "text"
    # How predict() turns the heads' logits into actions: "argmax" (the most likely token's bin centre, SpatialVLA's
    # decoding) or "expectation" (the probability-weighted mean of the bin centres: continuous; grippers keep argmax).
    token_decoding: str = "argmax"
    # What the MLP head outputs. "tokens": per-group logits over the action grid's bins (cross-entropy, decoded by
    # token_decoding). "continuous": the chunk of actions in the grid's normalised space ([-1, 1] per dimension,
    # grippers as they are), trained by mean squared error -- the regression S-est learned from (rows S-est and
    # C2 in docs/policy_experiments.md); predict_tokens() then encodes the actions on the grid.
    action_output: str = "tokens"
    # False freezes the keypoint encoder and its readout (a second stage on perception trained before, see
    # `vla train --perception-from`); with the MLP head, training then runs on cached position estimates.
    perception_trainable: bool = True
    # How the model was evaluated, so that `vla eval`, `vla demo` and the client run it the same way by default:
    # actions executed from each chunk before re-planning (None: not set, runners use 1), temporal ensembling.
    exec_horizon: int | None = None
    exec_ensemble: bool = False
    model_version: str = "untrained"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras) if not isinstance(self.cameras, str) else (self.cameras,)
        self.layers = tuple(self.layers) if not isinstance(self.layers, str) else (self.layers,)
        self.ego3d_centre = tuple(float(c) for c in self.ego3d_centre) if _is_seq(self.ego3d_centre) else \
            self.ego3d_centre
        if self.image_size is not None:
            if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
                self.image_size = (self.image_size, self.image_size)
            elif _is_seq(self.image_size):
                self.image_size = tuple(self.image_size)
        self.validate()

    # --- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        _check(isinstance(self.clip_model, str) and self.clip_model, "clip_model", self.clip_model,
               "a model name")
        _check(self.clip_pretrained is None or isinstance(self.clip_pretrained, str), "clip_pretrained",
               self.clip_pretrained, "null or a path/tag")
        _check(len(self.cameras) >= 1 and all(isinstance(c, str) and c for c in self.cameras)
               and len(set(self.cameras)) == len(self.cameras), "cameras", self.cameras,
               "one or more distinct camera names")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and all(_pos_int(s) for s in self.image_size), "image_size",
                   self.image_size, "null or [H, W] positive ints")
        for name in ("state_dim", "action_dim", "chunk_len", "width", "heads", "ego3d_reso", "mlp_width"):
            _check(_pos_int(getattr(self, name)), name, getattr(self, name), "a positive int")
        for name in ("ffn_mult", "ponet_window", "n_ctx", "privileged_dim", "keypoints"):
            _check(_int(getattr(self, name)) and getattr(self, name) >= 0, name, getattr(self, name),
                   "an int >= 0")
        _check(self.n_ctx >= 1, "n_ctx", self.n_ctx, "an int >= 1 (the learned prompt context)")
        _check(self.width % self.heads == 0, "heads", self.heads, f"a divisor of width={self.width}")
        _check(len(self.layers) >= 1 and all(k in LAYER_KINDS for k in self.layers), "layers", self.layers,
               f"a non-empty list of {LAYER_KINDS}")
        _check(self.exec_horizon is None or (_pos_int(self.exec_horizon) and self.exec_horizon <= self.chunk_len),
               "exec_horizon", self.exec_horizon, f"null or an int in [1, chunk_len={self.chunk_len}]")
        for name in ("text_finetune", "vision_trainable", "ego3d", "exec_ensemble", "vision_tokens",
                     "keypoint_positions", "perception_trainable"):
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        _check(_pos_int(self.keypoint_channels) and self.keypoint_channels % 2 == 0, "keypoint_channels",
               self.keypoint_channels, "an even int > 0")
        _check(self.vision_tokens or self.keypoints > 0, "vision_tokens", self.vision_tokens,
               "true unless keypoints > 0 (the head needs some view of the image)")
        _check(not (self.keypoints and self.privileged_dim) or (self.privileged_dim % 3 == 0
               and self.privileged_dim // 3 <= self.keypoints), "privileged_dim", self.privileged_dim,
               f"a multiple of 3 of at most 3 x keypoints={self.keypoints} (each position is read from one keypoint)")
        _check(not self.keypoint_positions or (self.keypoints and self.privileged_dim), "keypoint_positions",
               self.keypoint_positions, "false unless keypoints > 0 and privileged_dim > 0 (they are the readout's)")
        _check(self.action_head in ACTION_HEADS, "action_head", self.action_head, f"one of {ACTION_HEADS}")
        _check(self.action_head != "mlp" or (self.keypoints and self.privileged_dim and not self.vision_tokens),
               "action_head", self.action_head, "'transformer' unless keypoints > 0, privileged_dim > 0 and "
               "vision_tokens is false (the MLP reads the keypoint readout's positions, not patch tokens)")
        _check(self.token_decoding in TOKEN_DECODINGS, "token_decoding", self.token_decoding,
               f"one of {TOKEN_DECODINGS}")
        _check(self.action_output in ACTION_OUTPUTS, "action_output", self.action_output, f"one of {ACTION_OUTPUTS}")
        _check(self.action_output == "tokens" or self.action_head == "mlp", "action_output", self.action_output,
               "'tokens' unless action_head is 'mlp' (the transformer's queries decode grid tokens)")
        _check(self.mlp_instruction in MLP_INSTRUCTIONS, "mlp_instruction", self.mlp_instruction,
               f"one of {MLP_INSTRUCTIONS}")
        _check(self.mlp_instruction == "text" or self.action_head == "mlp", "mlp_instruction", self.mlp_instruction,
               "'text' unless action_head is 'mlp'")
        _check(not (self.action_head == "mlp" and self.keypoint_positions), "keypoint_positions",
               self.keypoint_positions, "false with action_head 'mlp' (the MLP reads the positions itself)")
        _check(self.perception_trainable or self.keypoints, "perception_trainable", self.perception_trainable,
               "true unless keypoints > 0 (it freezes the keypoint encoder)")
        _check(self.vision_tokens or not self.ego3d, "ego3d", self.ego3d,
               "false when vision_tokens is false (Ego3D encodes the CLIP patch tokens)")
        _check(_is_seq(self.ego3d_centre) and len(self.ego3d_centre) == 3
               and all(math.isfinite(c) for c in self.ego3d_centre), "ego3d_centre", self.ego3d_centre,
               "3 finite numbers")
        _check(_num(self.ego3d_scale) and self.ego3d_scale > 0, "ego3d_scale", self.ego3d_scale, "a number > 0")
        _check(_num(self.grid_min_sigma) and self.grid_min_sigma > 0, "grid_min_sigma", self.grid_min_sigma,
               "a number > 0")
        _check(self.control_hz is None or (_num(self.control_hz) and self.control_hz > 0), "control_hz",
               self.control_hz, "null or a number > 0")
        _check(isinstance(self.model_version, str), "model_version", self.model_version, "a string")
        _check(isinstance(self.extra, dict), "extra", self.extra, "a JSON object")
        if self.grid_bins is not None:
            ok = isinstance(self.grid_bins, dict) and all(
                k in ACTION_KINDS and (_pos_int(v) or (_is_seq(v) and v and all(_pos_int(b) for b in v)))
                for k, v in self.grid_bins.items())
            _check(ok, "grid_bins", self.grid_bins, f"null or {{kind: [bins...]}} with kinds in {ACTION_KINDS}")
        try:
            from vla.policy.action_grid import parse_layout

            self.groups = parse_layout(self.action_layout, self.action_dim)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"policy config: action_layout {self.action_layout!r} does not fit action_dim="
                            f"{self.action_dim}: {e}") from None

    # --- derived -----------------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.groups)

    # --- presets -----------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> PolicyConfig:
        """Seconds to build and run: for tests (vla-tiny CLIP, 32 px, 1 camera, 2 head layers of width 64)."""
        base = dict(clip_model="vla-tiny", cameras=("corner",), chunk_len=4, width=64, heads=2,
                    layers=("ponet", "attn"), ffn_mult=2, n_ctx=4)
        return cls(**{**base, **overrides})

    @classmethod
    def default(cls, **overrides: Any) -> PolicyConfig:
        """The default model: vla-small CLIP (112 px, 4 vision layers: the 128 px / 6-layer tower cost ~34 ms of
        one core per observation, this one ~20-27 ms; the simulator's 128 px frames are resized) and a 4-layer
        head; sized to answer one observation in < 30 ms p50 on 2 CPU cores (scripts/train_default.py)."""
        base = dict(clip_model="vla-small", cameras=("corner",), chunk_len=4, width=128, heads=4,
                    layers=("ponet", "ponet", "attn", "ponet"), ffn_mult=2, n_ctx=4)
        return cls(**{**base, **overrides})

    @classmethod
    def resolve(cls, spec: str | os.PathLike | None) -> PolicyConfig:
        """'tiny' | 'default' | path to a JSON file (a full config or a preset plus overrides)."""
        if spec is None or str(spec) == "default":
            return cls.default()
        if str(spec) == "tiny":
            return cls.tiny()
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--config {spec!r} is neither a preset {PRESETS} nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    # --- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("groups", None)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Inverse of `to_dict`; also accepts {"preset": "tiny"|"default", ...overrides}. Unknown fields are
        refused by name (a typo must not silently fall back to a default)."""
        if not isinstance(data, dict):
            raise UserError(f"policy config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt, version = data.pop("format", FORMAT), data.pop("version", VERSION)
        if fmt != FORMAT:
            raise UserError(f"policy config: format {fmt!r} is not {FORMAT!r}")
        if not isinstance(version, int) or version > VERSION:
            raise UserError(f"policy config: version {version!r} is newer than this code ({VERSION})")
        preset = data.pop("preset", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"policy config: unknown field(s) {unknown}; known fields: {sorted(known)}")
        if preset is None:
            return cls(**data)
        if preset not in PRESETS:
            raise UserError(f"policy config: preset {preset!r} is not one of {PRESETS}")
        return getattr(cls, preset)(**data)


def _check(ok: Any, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"policy config: {name}={value!r} is invalid; expected {expected}")


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pos_int(x: Any) -> bool:
    return _int(x) and x > 0


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_seq(x: Any) -> bool:
    return isinstance(x, (list, tuple))
