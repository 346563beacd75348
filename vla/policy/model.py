"""The VLA policy: CLIP towers + Ego3D + CoOp context -> PoNet/attention head -> one token per (step, group).

Token sequence per sample (N = V*P + 1 + T*G + V*K + L), one PoNet segment per camera, the state, the queries,
the keypoints and the text (segment max-pooling never mixes modalities):

    [cam_0 patches (P) | ... | cam_{V-1} patches | state | T*G action queries | keypoints (V*K) | instruction (L)]

Patches are there when `vision_tokens` (CLIP ViT, + Ego3D), keypoints when `keypoints` > 0 (vla.policy.keypoints:
a conv stem that finds small things the 16 px patches cannot, the default model's vision path).

With `action_head="mlp"` there is no token sequence: an MLP maps [proprio state, the keypoint readout's position
estimates, the instruction (the mean text-tower token, or its match to the training instructions:
vla.policy.instructions)] to the T*G head inputs, or (`action_output: continuous`) straight to the chunk of
normalised actions, trained by regression (the recipe the experiments found to learn the actions from 20
demonstrations per task; docs/policy_experiments.md). Training it on frozen perception runs on cached estimates
(`vla.policy.data.PositionCache`).

Decoding is parallel: one forward pass, argmax per query token (or, `token_decoding: expectation`, the expected
bin centre), `ActionGrid.decode` -> (B, T, action_dim).
SpatialVLA decodes its tokens autoregressively (one pass per token); here T*G tokens cost one pass.

    policy = VLAPolicy.from_config(PolicyConfig.tiny())
    actions = policy.predict(obs)          # obs: sim.schema keys, batched -> (B, T, A) float32
    policy.save("out/policy"); VLAPolicy.load("out/policy")
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels.layers import AttentionBlock, PoNetLayer
from vla.errors import UserError
from vla.policy.action_grid import ActionGrid
from vla.policy.config import PolicyConfig
from vla.policy.ego3d import Ego3DEncoding
from vla.policy.instructions import InstructionVocab
from vla.policy.keypoints import FEATURES as KEYPOINT_FEATURES
from vla.policy.keypoints import KeypointEncoder, KeypointReadout

TEXT_CACHE_SIZE = 256
POSITION_CLAMP = 2.0  # metres: estimates beyond this are wrong keypoints, not positions


def synthetic_grid(config: PolicyConfig, n: int = 4096, seed: int = 0) -> ActionGrid:
    """A grid fitted on N(0, 0.5) actions clipped to [-1, 1] (grippers +-1): for untrained policies."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(0.0, 0.5, size=(n, config.action_dim)), -1, 1)
    for g in config.groups:
        if g["kind"] == "gripper":
            a[:, g["dims"][0]] = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return ActionGrid.fit(a, config.action_layout, bins=config.grid_bins, min_sigma=config.grid_min_sigma)


def default_stats(config: PolicyConfig, grid: ActionGrid) -> dict[str, Any]:
    """stats.json content: action bounds from the grid, identity state normalisation."""
    grippers = {g.name: g.threshold for g in grid.groups if g.kind == "gripper"}
    return {
        "action": {"q01": grid.q_low.tolist(), "q99": grid.q_high.tolist(), "gripper_threshold": grippers},
        "state": {"mean": [0.0] * config.state_dim, "std": [1.0] * config.state_dim},
    }


class VLAPolicy(nn.Module):
    """See the module docstring. Build with `from_config` or `load`; `predict` is the serving entry point."""

    def __init__(self, config: PolicyConfig, action_grid: ActionGrid, clip, stats: dict | None = None):
        super().__init__()
        from vla.prompts.coop import PromptLearner

        _check_grid(config, action_grid)
        self.config, self.action_grid = config, action_grid
        self.stats = stats or default_stats(config, action_grid)
        self.checkpoint: str | None = None
        self.clip = clip
        # PromptLearner freezes the whole CLIP; the flags below re-enable the parts we train.
        self.prompt = PromptLearner(clip, n_ctx=config.n_ctx)
        for p in clip.model.visual.parameters():  # unused, so frozen, when no patch tokens enter the head
            p.requires_grad_(config.vision_trainable and config.vision_tokens)
        if config.text_finetune:
            for name, p in clip.model.named_parameters():
                if not name.startswith("visual."):
                    p.requires_grad_(True)
        # The pooled/projected outputs are not used (the head reads tokens): frozen, so DDP sees no unused
        # trainable parameters.
        for name in ("visual.proj", "text_projection", "logit_scale", "logit_bias"):
            p = clip.model.get_parameter(name) if _has_param(clip.model, name) else None
            if p is not None:
                p.requires_grad_(False)
        hw = tuple(clip.image_size)
        if config.image_size is None:
            config.image_size = hw
        elif tuple(config.image_size) != hw:
            raise UserError(f"policy config: image_size={list(config.image_size)} does not match the CLIP "
                            f"model {config.clip_model!r} input size {list(hw)}")
        V, W, Wv = len(config.cameras), config.width, clip.vision_width
        self.ego3d = Ego3DEncoding(Wv, hw, clip.patch_size[0], reso=config.ego3d_reso,
                                   centre=config.ego3d_centre, scale=config.ego3d_scale) if config.ego3d else None
        self.camera_embed = nn.Parameter(torch.zeros(V, Wv))
        self.vision_proj = nn.Linear(Wv, W)
        self.text_proj = nn.Linear(clip.text_width, W)
        self.state_proj = nn.Linear(config.state_dim, W)
        self.type_embed = nn.Parameter(torch.zeros(4, W))  # vision, text, state, query
        self.queries = nn.Parameter(torch.zeros(config.chunk_len * config.n_groups, W))
        mlp = config.action_head == "mlp"
        self.layers = nn.ModuleList(() if mlp else (
            PoNetLayer(W, config.heads, window=config.ponet_window, ffn_mult=config.ffn_mult) if kind == "ponet"
            else AttentionBlock(W, config.heads, ffn_mult=config.ffn_mult)
            for kind in config.layers
        ))
        continuous = config.action_output == "continuous"  # the MLP regresses actions: no token heads
        self.heads = nn.ModuleList(() if continuous else (nn.Linear(W, v) for v in action_grid.vocab_sizes))
        # Training-time auxiliary readout (config.privileged_dim): unused by predict().
        self.privileged_head = nn.Linear(W, config.privileged_dim) if config.privileged_dim and not config.keypoints \
            else None
        for p in (self.camera_embed, self.type_embed, self.queries):
            nn.init.normal_(p, std=0.02)
        self.keypoint_encoder = None
        if config.keypoints:  # built after the other parameters so that keypoints=0 keeps their initialisation
            self.keypoint_encoder = KeypointEncoder(config.keypoints, config.keypoint_channels)
            if not mlp:  # keypoint tokens for the transformer; the MLP reads the readout's positions only
                self.keypoint_proj = nn.Linear(KEYPOINT_FEATURES, W)
                self.keypoint_embed = nn.Parameter(torch.randn(V * config.keypoints, W) * 0.02)  # which keypoint
            if config.privileged_dim:  # positions read from their own keypoints, not from the head
                self.privileged_head = KeypointReadout(config.privileged_dim // 3)
                poses = self.stats.get("camera_poses")
                if poses is not None:
                    self.privileged_head.init_from_pose(poses[config.cameras[0]])
            self.position_proj = nn.Linear(config.privileged_dim, W) if config.keypoint_positions else None
            if not config.perception_trainable:  # trained in an earlier stage (vla train --perception-from)
                for p in (*self.keypoint_encoder.parameters(), *self.privileged_head.parameters()):
                    p.requires_grad_(False)
        self.action_mlp = None
        if mlp:
            # [normalised state | standardised position estimates | mean instruction token] -> T*G head inputs
            Hm = config.mlp_width
            self.instruction_vocab = None
            n_text = W
            if config.mlp_instruction == "match":
                known = self.stats.get("instructions")
                if not known:
                    raise UserError("mlp_instruction 'match' needs the training instructions (stats['instructions']"
                                    ", written by vla train from the dataset)")
                texts, groups = (known, None) if isinstance(known, list) else (known["texts"], known.get("groups"))
                vocab = self.instruction_vocab = InstructionVocab.fit(texts, clip, groups=groups)
                n_text = len(vocab.group_names)  # one weight per task (per instruction for older stats)
            self.action_mlp = nn.Sequential(
                nn.Linear(config.state_dim + config.privileged_dim + n_text, Hm), nn.ReLU(),
                nn.Linear(Hm, Hm), nn.ReLU(), nn.Linear(Hm, Hm), nn.ReLU(),
                nn.Linear(Hm, config.chunk_len * (config.action_dim if continuous else config.n_groups * W)))
            # inputs standardised by the statistics of the readout's estimates (set_position_stats); policies
            # trained before they existed read the true positions' statistics, as they were trained to
            ps = self.stats.get("privileged", {})
            mean = ps.get("estimate_mean", ps.get("mean", [0.0] * config.privileged_dim))
            std = ps.get("estimate_std", ps.get("global_std", [1.0] * config.privileged_dim))
            self.register_buffer("position_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
            self.register_buffer("position_std", torch.tensor(std, dtype=torch.float32), persistent=False)
        mean = torch.tensor(clip.model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073))
        std = torch.tensor(clip.model.visual.image_std or (0.26862954, 0.26130258, 0.27577711))
        self.register_buffer("pixel_mean", (mean * 255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", (std * 255).view(1, 3, 1, 1), persistent=False)
        self._text_cache: collections.OrderedDict = collections.OrderedDict()
        self._match_cache: collections.OrderedDict = collections.OrderedDict()  # instruction -> task weights
        self._instruction_ref: torch.Tensor | None = None  # training instructions embedded (instruction_match)
        self.clip.eval()

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PolicyConfig, action_grid: ActionGrid | None = None, seed: int = 0,
                    stats: dict | None = None, device: str | torch.device = "cpu",
                    load_pretrained: bool = True) -> VLAPolicy:
        """A randomly initialised policy (CLIP from `config.clip_pretrained` when given); the same seed gives
        the same weights. Without a grid, one is fitted on synthetic actions (`synthetic_grid`)."""
        from vla.clip import load_clip

        grid = action_grid if action_grid is not None else synthetic_grid(config)
        pretrained = config.clip_pretrained if load_pretrained else None
        clip = load_clip(config.clip_model, pretrained, weights_follow=not load_pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = cls(config, grid, clip, stats)
        return policy.to(device).eval()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> VLAPolicy:
        from vla.policy.checkpoint import load_policy

        return load_policy(path, device)

    def save(self, path: str | os.PathLike) -> None:
        from vla.policy.checkpoint import save_policy

        save_policy(self, path)

    # --- properties --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.queries.device

    @property
    def uses_depth(self) -> bool:
        """Depth and intrinsics feed Ego3D (patch tokens) or the keypoints' 3-D lift."""
        return self.ego3d is not None or self.keypoint_encoder is not None

    @property
    def privileged_in_units(self) -> bool:
        """The keypoint readout predicts positions themselves; the head's readout predicts standardised ones."""
        return self.keypoint_encoder is not None

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> VLAPolicy:
        super().train(mode)
        self.clip.eval()  # no dropout/batch-norm in the CLIP towers; keep them deterministic
        self._text_cache.clear()  # weights may change from here on
        self._clear_match()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._text_cache.clear()
        self._clear_match()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self._text_cache.clear()  # .to(device) / .half(): cached tokens would be on the old device/dtype
        self._clear_match()
        return super()._apply(*args, **kwargs)

    def _clear_match(self) -> None:
        """Forget the matches and the reference embeddings: the word embeddings they come from may change
        (training, load_state_dict -- a policy is built with random weights before its own are loaded)."""
        self._match_cache.clear()
        self._instruction_ref = None

    def instruction_match(self, instructions: list[str]) -> torch.Tensor:
        """(B, tasks) soft match of each instruction to the training instructions, from the current word
        embeddings; a fixed function of them (no gradient), so cached unless they train."""
        vocab = getattr(self, "instruction_vocab", None)  # set for MLP heads only
        if vocab is None:
            cfg = self.config
            raise UserError("instruction_match needs an MLP head with mlp_instruction 'match' (this policy: "
                            f"action_head={cfg.action_head!r}, mlp_instruction={cfg.mlp_instruction!r})")
        frozen = not self.clip._text.token_embedding.weight.requires_grad
        if self._instruction_ref is None or not frozen:
            self._instruction_ref = vocab.embed(vocab.texts, self.clip)

        def match(todo: list[str]) -> list[torch.Tensor]:
            return list(vocab.match(todo, self.clip, self._instruction_ref))

        return torch.stack(_cached(self._match_cache, list(instructions), match, frozen))

    def reset(self, env_ids=None) -> None:
        """No per-environment memory in the model (chunk ensembling lives in sim.chunking / the server)."""

    # --- inputs ------------------------------------------------------------------------------------------
    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        s = self.stats["state"]
        mean = torch.tensor(s["mean"], dtype=torch.float32, device=state.device)
        std = torch.tensor(s["std"], dtype=torch.float32, device=state.device)
        return (state.float() - mean) / std.clamp_min(1e-6)

    def prepare(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Observation batch (sim.schema keys, numpy or torch) -> forward() keyword arguments on our device."""
        return prepare_inputs(self, obs)

    def _images(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 (B, V, H, W, 3) -> normalised float (B*V, 3, S, S) at the CLIP input size."""
        B, V, H, W, _ = rgb.shape
        x = rgb.reshape(B * V, H, W, 3).permute(0, 3, 1, 2).float()  # (BV, 3, H, W)
        if (H, W) != tuple(self.config.image_size):
            x = F.interpolate(x, size=tuple(self.config.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    def _text(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions -> CLIP text tokens (B, L, Wt) and their mask (B, L), L = longest in the batch.

        Each distinct instruction runs the text tower once; in eval mode results are cached (the same few
        instructions recur at every control step)."""
        def encode(todo: list[str]) -> list[torch.Tensor]:
            out = self.prompt.encode_texts(todo)
            return [out.tokens[i, :n] for i, n in enumerate(out.mask.sum(1).tolist())]  # (L_i, Wt)

        use_cache = not self.training and not torch.is_grad_enabled()
        rows = _cached(self._text_cache, instructions, encode, use_cache)
        L = max(r.shape[0] for r in rows)
        tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, L, Wt)
        lengths = torch.tensor([r.shape[0] for r in rows], device=tokens.device)
        mask = torch.arange(L, device=tokens.device)[None, :] < lengths[:, None]
        return tokens, mask

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, rgb: torch.Tensor, state: torch.Tensor, instructions: list[str],
                depth: torch.Tensor | None = None, intrinsics: torch.Tensor | None = None,
                has_depth: torch.Tensor | None = None, privileged: bool = False, heatmaps: bool = False,
                positions: torch.Tensor | None = None):
        """rgb uint8 (B, V, H, W, 3), state (B, S) normalised, depth (B, V, H', W') metres, intrinsics
        (B, V, 3, 3) for the depth size -> per group logits (B, T, vocab_g); with privileged=True also the
        privileged-target regression (B, privileged_dim): from the keypoints when the policy has them (positions),
        else from the mean of the query tokens (standardised values); with heatmaps=True as well the keypoints'
        softmax maps (B, V, K, h, w) (keypoint policies only), for their training loss.

        MLP-head policies may be given `positions` (B, privileged_dim), the readout's estimates cached from frozen
        perception (training on `vla.policy.data.PositionCache`); rgb, depth and intrinsics are then unused."""
        cfg = self.config
        if cfg.action_head == "mlp":
            return self._forward_mlp(rgb, state, instructions, depth, intrinsics, has_depth, privileged, heatmaps,
                                     positions)
        if positions is not None:
            raise UserError("positions= is for MLP-head policies (config.action_head is 'transformer')")
        B, V = rgb.shape[:2]
        parts, seg_ids = [], []  # token blocks in order, and the PoNet segment id of each block's tokens

        def add(tokens: torch.Tensor, segment: torch.Tensor) -> None:
            parts.append(tokens)
            seg_ids.append(segment)

        if cfg.vision_tokens:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.vision_trainable):
                _, patches = self.clip.encode_image(self._images(rgb))  # (BV, P, Wv)
            P = patches.shape[1]
            patches = patches.reshape(B, V, P, -1)  # (B, V, P, Wv)
            if self.ego3d is not None:
                d = depth[:, :, None] if depth is not None else None  # (B, V, 1, H', W')
                patches = self.ego3d(patches, d, intrinsics, has_depth)
            patches = patches + self.camera_embed[None, :, None, :].to(patches.dtype)
            vis = self.vision_proj(patches.reshape(B, V * P, -1)) + self.type_embed[0]  # (B, V*P, W)
            add(vis, torch.arange(V).repeat_interleave(P))
        dtype = parts[0].dtype if parts else self.queries.dtype
        text, text_mask = self._text(instructions)
        txt = self.text_proj(text.to(dtype)) + self.type_embed[1]  # (B, L, W)
        if heatmaps and self.keypoint_encoder is None:
            raise UserError("heatmaps=True needs a keypoint policy (config.keypoints is 0)")
        positions = None
        if self.keypoint_encoder is not None:
            kp, maps = self.keypoint_encoder(rgb, depth, intrinsics, has_depth, return_heatmaps=True)  # (B, V*K, 5)
            if isinstance(self.privileged_head, KeypointReadout):
                # From detached keypoints: the maps learn from their own cross-entropy; a readout still far off
                # (metres, early on) would otherwise swamp every other gradient under the clip.
                positions = self.privileged_head(kp.detach())  # (B, privileged_dim), the targets' units
        st = self.state_proj(state.to(dtype))
        if cfg.keypoint_positions:
            # hand and estimated object/goal in one token; clamped: an occluded keypoint can read metres off
            st = st + self.position_proj(positions.clamp(-2.0, 2.0).to(dtype))
        add(st[:, None] + self.type_embed[2], torch.tensor([V]))  # (B, 1, W)
        q_start = sum(p.shape[1] for p in parts)
        q = (self.queries + self.type_embed[3]).expand(B, -1, -1).to(dtype)  # (B, T*G, W)
        add(q, torch.full((q.shape[1],), V + 1))
        if self.keypoint_encoder is not None:
            add(self.keypoint_proj(kp.to(dtype)) + self.keypoint_embed.to(dtype), torch.full((kp.shape[1],), V + 2))
        # Text goes last so its padding sits at the end of the row: PoNet's local window around the other
        # tokens then sees the same neighbours whatever the batch's longest instruction (rows stay independent).
        add(txt, torch.full((txt.shape[1],), int(seg_ids[-1][-1]) + 1))  # segment ids must not decrease
        x = torch.cat(parts, dim=1)  # (B, N, W)
        Q, n_fixed = q.shape[1], x.shape[1] - txt.shape[1]
        mask = torch.cat([torch.ones(B, n_fixed, dtype=torch.bool, device=x.device), text_mask], dim=1)  # (B, N)
        seg = torch.cat(seg_ids).to(x.device)[None].expand(B, -1)  # (B, N)
        for layer in self.layers:
            x = layer(x, mask=mask, segment_ids=seg) if isinstance(layer, PoNetLayer) else layer(x, mask=mask)
        hq = x[:, q_start : q_start + Q]  # (B, T*G, W)
        h = hq.reshape(B, cfg.chunk_len, cfg.n_groups, -1)  # (B, T, G, W)
        logits = [head(h[:, :, g]) for g, head in enumerate(self.heads)]
        out = [logits]
        if privileged:
            if self.privileged_head is None:
                raise UserError("this policy has no privileged head (config.privileged_dim is 0)")
            # keypoint policies: positions in the targets' units (see privileged_in_units)
            out.append(positions if positions is not None else self.privileged_head(hq.mean(dim=1)))
        if heatmaps:
            out.append(maps)
        return out[0] if len(out) == 1 else tuple(out)

    def set_position_stats(self, estimates: torch.Tensor) -> None:
        """Standardise the MLP head's position inputs by the mean and std of the readout's own estimates
        (N, privileged_dim) -- what the head reads -- rather than of the true positions (vla train does this on the
        position cache). Kept in stats["privileged"], so a saved policy reads its inputs the same way."""
        est = estimates.detach().float().clamp(-POSITION_CLAMP, POSITION_CLAMP)
        mean, std = est.mean(0), est.std(0).clamp_min(1e-3)
        ps = self.stats.setdefault("privileged", {})
        ps["estimate_mean"], ps["estimate_std"] = mean.tolist(), std.tolist()
        self.position_mean.copy_(mean)
        self.position_std.copy_(std)

    def estimate_positions(self, rgb: torch.Tensor, depth: torch.Tensor | None = None,
                           intrinsics: torch.Tensor | None = None, has_depth: torch.Tensor | None = None,
                           heatmaps: bool = False):
        """The keypoint readout's estimates of the privileged targets from pixels, (B, privileged_dim) in their
        units (metres in simulation); with heatmaps=True also the keypoints' maps (B, V, K, h, w)."""
        if not isinstance(self.privileged_head, KeypointReadout):
            raise UserError("position estimates need a keypoint policy with privileged_dim > 0")
        kp, maps = self.keypoint_encoder(rgb, depth, intrinsics, has_depth, return_heatmaps=True)
        positions = self.privileged_head(kp.detach())  # detached: the maps learn from their own cross-entropy
        return (positions, maps) if heatmaps else positions

    def _forward_mlp(self, rgb, state, instructions, depth, intrinsics, has_depth, privileged, heatmaps,
                     positions):
        """forward() for action_head "mlp": positions from the keypoints (or given) -> MLP -> per group logits
        (or, action_output "continuous", the (B, T, action_dim) chunk in the grid's normalised space)."""
        maps = None
        if positions is None:
            if rgb is None:
                raise UserError("an MLP-head policy needs rgb (or cached positions=)")
            positions, maps = self.estimate_positions(rgb, depth, intrinsics, has_depth, heatmaps=True)
        elif heatmaps:
            raise UserError("heatmaps=True needs images, not cached positions")
        B, cfg = state.shape[0], self.config
        if self.instruction_vocab is not None:  # soft match to the training instructions
            instruction = self.instruction_match(instructions)
        else:
            text, text_mask = self._text(instructions)  # (B, L, Wt), (B, L)
            m = text_mask[..., None].to(text.dtype)
            instruction = self.text_proj((text * m).sum(1) / m.sum(1).clamp_min(1))  # (B, W): mean token
        # detached: the readout learns positions from its own loss, not from the actions
        pos = positions.detach().float().clamp(-POSITION_CLAMP, POSITION_CLAMP)
        pos = (pos - self.position_mean) / self.position_std
        h = self.action_mlp(torch.cat([state.float(), pos, instruction.float()], dim=-1))
        if cfg.action_output == "continuous":
            out = [h.reshape(B, cfg.chunk_len, cfg.action_dim)]  # normalised actions (ActionGrid.normalize)
        else:
            h = h.reshape(B, cfg.chunk_len, cfg.n_groups, -1)  # (B, T, G, W)
            out = [[head(h[:, :, g]) for g, head in enumerate(self.heads)]]
        if privileged:
            out.append(positions)
        if heatmaps:
            out.append(maps)
        return out[0] if len(out) == 1 else tuple(out)

    # --- decoding ----------------------------------------------------------------------------------------
    @staticmethod
    def tokens_from_logits(logits: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([lg.argmax(-1) for lg in logits], dim=-1)  # (B, T, G)

    @torch.inference_mode()
    def predict_tokens(self, obs: dict[str, Any]) -> torch.Tensor:
        """(B, T, G) grid tokens; a continuous-output policy's actions encoded on its grid."""
        if self.config.action_output == "continuous":
            return self.action_grid.encode(torch.from_numpy(self.predict(obs)))
        return self.tokens_from_logits(self(**self.prepare(obs)))

    def actions_from_normalised(self, normalised: np.ndarray) -> np.ndarray:
        """A continuous-output chunk in the grid's normalised space -> raw actions, float32."""
        grid = self.action_grid
        actions = grid.unnormalize(normalised)  # clipped to the data's range; grippers raw:
        for g in grid.groups:  # a regressed gripper command can overshoot, so clip it to its range too
            if g.kind == "gripper":
                d = list(g.dims)
                actions[..., d] = np.clip(actions[..., d], grid.q_low[d], grid.q_high[d])
        return actions.astype(np.float32)

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        """Observation batch -> (B, T, action_dim) float32 actions in the raw (un-normalised) action space,
        decoded as `config.token_decoding` says (or regressed: `action_output` "continuous")."""
        if self.config.action_output == "continuous":
            with torch.inference_mode():
                normalised = self(**self.prepare(obs)).float().cpu()
            return self.actions_from_normalised(normalised.numpy())
        if self.config.token_decoding == "expectation":
            with torch.inference_mode():
                logits = self(**self.prepare(obs))
                actions = self.action_grid.decode_expected([lg.float().softmax(-1) for lg in logits])
            return actions.cpu().numpy().astype(np.float32)
        tokens = self.predict_tokens(obs).cpu()
        return np.asarray(self.action_grid.decode(tokens.numpy()), dtype=np.float32)

    def metadata(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "action_layout": [{"name": g.name, "kind": g.kind, "dims": list(g.dims)} for g in self.action_grid.groups],
            "action_dim": cfg.action_dim,
            "chunk_len": cfg.chunk_len,
            "cameras": list(cfg.cameras),
            "image_size": list(cfg.image_size),
            "state_dim": cfg.state_dim,
            "stats": self.stats,
            "control_hz": cfg.control_hz,
            # how the model was evaluated (horizon None: not stated): runners and clients use it unless told otherwise
            "execution": {"horizon": cfg.exec_horizon, "ensemble": cfg.exec_ensemble},
            "model_version": cfg.model_version,
            "checkpoint": self.checkpoint,
            "param_count": self.param_count,
            "vocab_sizes": list(self.action_grid.vocab_sizes),
            "clip_model": cfg.clip_model,
            # Depth and intrinsics feed Ego3D and the keypoints' 3-D lift; without them Ego3D uses its learned
            # "no depth" embedding and keypoints keep only their image coordinates.
            "uses_depth": self.uses_depth,
            "uses_intrinsics": self.uses_depth,
            **({"intrinsics": self.stats["intrinsics"]} if "intrinsics" in self.stats else {}),
        }

    def check_instruction(self, text: str) -> None:
        """Raise UserError if `text` cannot be encoded (empty, or longer than the text tower's context)."""
        if text not in self._text_cache:
            self.prompt.check_texts([text])


def _cached(cache: collections.OrderedDict, keys: list[str], compute, use_cache: bool) -> list[torch.Tensor]:
    """compute(distinct keys not in the cache) -> one tensor per key; each distinct key computed once per call,
    kept in `cache` (the most recent TEXT_CACHE_SIZE) when use_cache. Returns one tensor per key, in order."""
    todo = [k for k in dict.fromkeys(keys) if not (use_cache and k in cache)]
    fresh = dict(zip(todo, compute(todo))) if todo else {}
    if use_cache:
        cache.update(fresh)
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
    return [fresh[k] if k in fresh else cache[k] for k in keys]


def _has_param(module: nn.Module, name: str) -> bool:
    try:
        module.get_parameter(name)
        return True
    except AttributeError:
        return False


def _check_grid(config: PolicyConfig, grid: ActionGrid) -> None:
    if grid.action_dim != config.action_dim:
        raise UserError(f"action grid: action_dim {grid.action_dim} does not match the config's "
                        f"action_dim={config.action_dim}")
    want = [(g["name"], g["kind"], tuple(g["dims"])) for g in config.groups]
    have = [(g.name, g.kind, tuple(g.dims)) for g in grid.groups]
    if want != have:
        raise UserError(f"action grid: groups {have} do not match the config's action_layout {want}")


def _tensor(x: Any, name: str, dtype: torch.dtype | None, device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device)


def prepare_inputs(policy: VLAPolicy, obs: dict[str, Any]) -> dict[str, Any]:
    """Validate an observation batch against the policy's config and convert it; errors name the key."""
    cfg, dev = policy.config, policy.device
    for key in ("rgb", "state", "instruction"):
        if key not in obs:
            raise UserError(f"observation is missing {key!r} (needs rgb, state, instruction; depth and "
                            "intrinsics optional)")
    rgb = obs["rgb"]
    if rgb.ndim != 5 or rgb.shape[1] != len(cfg.cameras) or rgb.shape[-1] != 3:
        raise UserError(f"observation 'rgb' must be (B, V={len(cfg.cameras)}, H, W, 3) uint8, got shape "
                        f"{tuple(rgb.shape)}")
    if rgb.dtype not in (torch.uint8, np.uint8):
        raise UserError(f"observation 'rgb' must be uint8, got {rgb.dtype}")
    B = rgb.shape[0]
    instr = obs["instruction"]
    instr = [instr] if isinstance(instr, str) else list(instr)
    if len(instr) != B or not all(isinstance(t, str) for t in instr):
        raise UserError(f"observation 'instruction' must be {B} strings, got {instr!r:.200}")
    state = obs["state"]
    if tuple(state.shape) != (B, cfg.state_dim):
        raise UserError(f"observation 'state' must be (B, {cfg.state_dim}) = {(B, cfg.state_dim)}, got "
                        f"{tuple(state.shape)}")
    out = {"rgb": _tensor(rgb, "rgb", torch.uint8, dev), "instructions": instr,
           "state": policy.normalize_state(_tensor(state, "state", torch.float32, dev))}
    depth = obs.get("depth")
    if depth is not None and policy.uses_depth:
        if depth.ndim != 4 or tuple(depth.shape[:2]) != (B, len(cfg.cameras)):
            raise UserError(f"observation 'depth' must be (B, V, H, W) = ({B}, {len(cfg.cameras)}, H, W), got "
                            f"{tuple(depth.shape)}")
        K = obs.get("intrinsics")
        if K is None or tuple(K.shape) != (B, len(cfg.cameras), 3, 3):
            raise UserError(f"observation 'intrinsics' must be (B, V, 3, 3) with depth, got "
                            f"{None if K is None else tuple(K.shape)}")
        out["depth"] = _tensor(depth, "depth", torch.float32, dev)
        out["intrinsics"] = _tensor(K, "intrinsics", torch.float32, dev)
        if obs.get("has_depth") is not None:
            out["has_depth"] = _tensor(obs["has_depth"], "has_depth", torch.bool, dev)
    return out
