"""Adaptive action grids (SpatialVLA): continuous actions <-> one discrete token per action group.

An action layout splits the action vector into groups, each one token per step:
- ``translation`` (3 dims): normalised (x, y, z) -> spherical (theta in [0, pi], phi in [-pi, pi],
  r in [0, sqrt 3]), one joint token over the theta x phi x r product grid (default 16 x 32 x 8 = 4096);
- ``rotation`` (3 dims): normalised (roll, pitch, yaw), joint token over a 16 x 16 x 16 grid;
- ``gripper`` (1 dim): binary, token 1 when the RAW value > threshold; decodes to ``values[token]``. The
  threshold and the two values default from the data: threshold = (min + max) / 2 and values = (min, max), so
  {0, 1} data (SpatialVLA) gives 0.5 / (0, 1) and Meta-World's effort in [-1, 1] gives 0 / (-1, 1).
  Override per group in the layout: ``{"gripper": {"dims": [3], "threshold": 0.0, "values": [-1.0, 1.0]}}``;
- ``joint`` (1 dim each): any other scalar, binned alone (default 256 bins).

Every non-gripper dim is normalised with q01/q99 bounds, y = clip(2 (x - q01) / (q99 - q01) - 1, -1, 1). A dim
with q99 == q01 (constant data) has no spread to normalise: y = 0 for every input and it decodes to q01.
Per component, edges are equal-probability cuts of a fitted Gaussian N(mu, max(sigma, min_sigma)) truncated to
the component's range; decoding takes bin midpoints, goes back to Cartesian, clips to [-1, 1] and
un-normalises.

Layout presets: ``metaworld`` (translation [0, 1, 2] + gripper [3]) and ``ee7`` (translation, rotation,
gripper).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla.errors import UserError

__all__ = [
    "ActionGrid", "GroupGrid", "LAYOUTS", "DEFAULT_BINS", "parse_layout", "gaussian_edges", "interp_matrix",
]

KINDS = ("translation", "rotation", "gripper", "joint")
N_DIMS = {"translation": 3, "rotation": 3, "gripper": 1, "joint": 1}
DEFAULT_BINS: dict[str, tuple[int, ...]] = {
    "translation": (16, 32, 8), "rotation": (16, 16, 16), "gripper": (2,), "joint": (256,),
}
RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "translation": ((0.0, math.pi), (-math.pi, math.pi), (0.0, math.sqrt(3.0))),
    "rotation": ((-1.0, 1.0),) * 3,
    "joint": ((-1.0, 1.0),),
}
LAYOUTS: dict[str, dict[str, list[int]]] = {
    "metaworld": {"translation": [0, 1, 2], "gripper": [3]},
    "ee7": {"translation": [0, 1, 2], "rotation": [3, 4, 5], "gripper": [6]},
}
FORMAT, VERSION = "vla.action_grid", 1


@dataclass
class GroupGrid:
    """One group's grid: ``edges[c]`` (bins[c] + 1,) float64 per component; gripper: threshold/values."""

    name: str
    kind: str
    dims: tuple[int, ...]
    bins: tuple[int, ...] = ()
    mu: tuple[float, ...] = ()
    sigma: tuple[float, ...] = ()
    edges: list[np.ndarray] = field(default_factory=list)
    threshold: float = 0.5
    values: tuple[float, float] = (0.0, 1.0)

    @property
    def vocab(self) -> int:
        return 2 if self.kind == "gripper" else int(np.prod(self.bins))

    def centres(self) -> list[np.ndarray]:
        return [(e[:-1] + e[1:]) / 2 for e in self.edges]


# ---- layout parsing
def parse_layout(layout: str | Mapping | Sequence, action_dim: int) -> list[dict[str, Any]]:
    """Normalise a layout to ``[{"name", "kind", "dims", (gripper) "threshold"?, "values"?}, ...]``.

    Accepted: a preset name (``LAYOUTS``); a mapping kind -> dims or kind -> {"dims": ..., options}
    (``joint`` dims become one group each, named ``joint<d>``); or a list of {"kind", "dims", "name"?,
    options} dicts. The groups must partition range(action_dim).
    """
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown action layout {layout!r}; presets: {sorted(LAYOUTS)}")
        layout = LAYOUTS[layout]
    items: list[dict[str, Any]] = []
    if isinstance(layout, Mapping):
        for kind, spec in layout.items():
            spec = dict(spec) if isinstance(spec, Mapping) else {"dims": spec}
            dims = [spec["dims"]] if isinstance(spec.get("dims"), int) else list(spec.get("dims", []))
            if kind == "joint":
                items += [{**spec, "kind": "joint", "dims": [d], "name": f"joint{d}"} for d in dims]
            else:
                items.append({**spec, "kind": kind, "dims": dims})
    else:
        items = [dict(g) for g in layout]
    groups, seen_names, used = [], set(), []
    for g in items:
        kind = g.get("kind")
        if kind not in KINDS:
            raise ValueError(f"action layout group {g!r}: kind must be one of {KINDS}")
        dims = tuple(int(d) for d in g.get("dims", ()))
        if len(dims) != N_DIMS[kind]:
            raise ValueError(f"action layout group {kind!r} needs {N_DIMS[kind]} dims, got {list(dims)}")
        name = str(g.get("name") or (f"joint{dims[0]}" if kind == "joint" else kind))
        if name in seen_names:
            raise ValueError(f"action layout has two groups named {name!r}")
        seen_names.add(name)
        used += dims
        out = {"name": name, "kind": kind, "dims": dims}
        if kind == "gripper":
            out.update({k: g[k] for k in ("threshold", "values") if k in g})
        groups.append(out)
    if sorted(used) != list(range(action_dim)):
        raise ValueError(
            f"action layout dims {sorted(used)} must cover each of the {action_dim} action dims exactly once"
        )
    return groups


# ---- grid maths
def gaussian_edges(mu: float, sigma: float, lo: float, hi: float, m: int) -> np.ndarray:
    """Equal-probability edges of N(mu, sigma) on [lo, hi]: Phi^-1(linspace(Phi(lo), Phi(hi), m + 1)).

    Computed in the tail nearer the interval (mirroring when the interval lies right of mu) so that a Gaussian
    far from [lo, hi] keeps float64 precision; if the edges still collapse, falls back to uniform edges.
    """
    if not (sigma > 0 and lo < hi and m >= 1):
        raise ValueError(f"gaussian_edges needs sigma > 0, lo < hi, m >= 1; got {sigma=}, {lo=}, {hi=}, {m=}")
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    flip = a + b > 0
    if flip:
        a, b = -b, -a
    p = torch.special.ndtr(torch.tensor([a, b], dtype=torch.float64))
    z = torch.special.ndtri(torch.linspace(float(p[0]), float(p[1]), m + 1, dtype=torch.float64)).numpy()
    if flip:
        z = -z[::-1]
    e = np.clip(mu + sigma * z, lo, hi)
    e[0], e[-1] = lo, hi
    if not (np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)):
        return np.linspace(lo, hi, m + 1)
    return e


def interp_matrix(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(len(new), len(old)) weights of 1-D linear interpolation from points ``old`` (increasing) to ``new``.

    New points outside [old[0], old[-1]] take the nearest end value (as np.interp).
    """
    n_old = len(old)
    M = np.zeros((len(new), n_old))
    if n_old == 1:
        M[:, 0] = 1.0
        return M
    x = np.clip(new, old[0], old[-1])
    j = np.clip(np.searchsorted(old, x, side="right") - 1, 0, n_old - 2)
    t = (x - old[j]) / (old[j + 1] - old[j])
    rows = np.arange(len(new))
    M[rows, j] = 1.0 - t
    M[rows, j + 1] += t
    return M


def _to_spherical(xyz: torch.Tensor) -> list[torch.Tensor]:
    x, y, z = xyz.unbind(-1)
    return [torch.atan2(torch.hypot(x, y), z), torch.atan2(y, x), torch.linalg.vector_norm(xyz, dim=-1)]


def _from_spherical(theta: torch.Tensor, phi: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    s = torch.sin(theta)
    return torch.stack([r * s * torch.cos(phi), r * s * torch.sin(phi), r * torch.cos(theta)], dim=-1)


def _per_group(value: Any, g: dict[str, Any], default: Any) -> Any:
    """Look a setting up by group name, then by kind, in a mapping; a scalar applies to every group."""
    if isinstance(value, Mapping):
        return value.get(g["name"], value.get(g["kind"], default))
    return default if value is None else value


# ---- the grid
class ActionGrid:
    """Fitted grids for every group of an action layout plus the q01/q99 normalisation statistics."""

    def __init__(self, action_dim: int, groups: list[GroupGrid], q_low: np.ndarray, q_high: np.ndarray,
                 quantiles: tuple[float, float] = (0.01, 0.99)) -> None:
        self.action_dim = int(action_dim)
        self.groups = list(groups)
        self.q_low = np.asarray(q_low, dtype=np.float64)
        self.q_high = np.asarray(q_high, dtype=np.float64)
        self.quantiles = (float(quantiles[0]), float(quantiles[1]))
        if self.q_low.shape != (self.action_dim,) or self.q_high.shape != (self.action_dim,):
            raise ValueError(f"q_low/q_high must have shape ({self.action_dim},)")
        parse_layout(self.layout, self.action_dim)  # validates the partition
        self._cache: dict[str, dict[str, Any]] = {}

    # ---- properties
    @property
    def layout(self) -> list[dict[str, Any]]:
        return [{"name": g.name, "kind": g.kind, "dims": list(g.dims)} for g in self.groups]

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def vocab_sizes(self) -> list[int]:
        return [g.vocab for g in self.groups]

    def group(self, key: str | int) -> GroupGrid:
        if isinstance(key, int):
            return self.groups[key]
        for g in self.groups:
            if g.name == key:
                return g
        raise KeyError(f"no action group {key!r}; groups: {self.group_names}")

    # ---- fit
    @classmethod
    def fit(
        cls,
        actions: np.ndarray | torch.Tensor,
        layout: str | Mapping | Sequence,
        bins: Mapping[str, int | Sequence[int]] | None = None,
        min_sigma: float | Mapping[str, float] = 0.5,
        quantiles: tuple[float, float] = (0.01, 0.99),
    ) -> ActionGrid:
        """Fit normalisation bounds and per-component Gaussian bin edges to ``actions`` (N, action_dim).

        bins: per kind or group name, e.g. {"translation": (16, 32, 8), "joint": 64}; min_sigma: floor of the
        fitted sigma in component units (scalar, or per kind / group name); quantiles: normalisation bounds.
        """
        a = _as_numpy_2d(actions)
        groups = parse_layout(layout, a.shape[1])
        if not 0.0 <= quantiles[0] < quantiles[1] <= 1.0:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
        known = set(KINDS) | {g["name"] for g in groups}  # a kind absent from the layout is fine; a typo is not
        for arg, value in (("bins", bins), ("min_sigma", min_sigma)):
            unknown = sorted(set(value) - known) if isinstance(value, Mapping) else []
            if unknown:
                raise ValueError(f"{arg} names {unknown}, which are neither group kinds {KINDS} nor group names")
        q_low, q_high = np.quantile(a, quantiles, axis=0)
        out: list[GroupGrid] = []
        y = _normalise_np(a, q_low, q_high)
        for g in groups:
            gg = GroupGrid(name=g["name"], kind=g["kind"], dims=g["dims"])
            if g["kind"] == "gripper":
                col = a[:, g["dims"][0]]
                lo, hi = float(col.min()), float(col.max())
                gg.threshold = float(g.get("threshold", (lo + hi) / 2))
                vals = g.get("values", (lo, hi))
                if not isinstance(vals, Sequence) or len(vals) != 2:
                    raise ValueError(f"gripper group {g['name']!r}: values must be two numbers, got {vals!r}")
                gg.values = (float(vals[0]), float(vals[1]))
                gg.bins = (2,)
                out.append(gg)
                continue
            nb = _per_group(bins, g, DEFAULT_BINS[g["kind"]])
            nb = (int(nb),) if isinstance(nb, (int, np.integer)) else tuple(int(n) for n in nb)
            if len(nb) != len(RANGES[g["kind"]]) or min(nb) < 1:
                n_comp = len(RANGES[g["kind"]])
                raise ValueError(f"bins for group {g['name']!r} must be {n_comp} ints >= 1, got {nb}")
            ms = float(_per_group(min_sigma, g, 0.5))
            if not ms > 0:
                raise ValueError(f"min_sigma for group {g['name']!r} must be > 0, got {ms}")
            comps = _components(torch.from_numpy(y[:, list(g["dims"])]), g["kind"])
            gg.bins = nb
            for c, (lo, hi), m in zip(comps, RANGES[g["kind"]], nb):
                c = c.numpy()
                mu, sigma = float(c.mean()), max(float(c.std()), ms)
                gg.mu += (mu,)
                gg.sigma += (sigma,)
                gg.edges.append(gaussian_edges(mu, sigma, lo, hi, m))
            out.append(gg)
        return cls(a.shape[1], out, q_low, q_high, quantiles)

    # ---- normalisation
    def normalize(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """q01/q99 normalisation of every non-gripper dim to [-1, 1]; gripper dims pass through raw."""
        x, back = _as_torch(actions, torch.float64)
        return back(self._normalise(x), np.float64)

    def unnormalize(self, normalised: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        y, back = _as_torch(normalised, torch.float64)
        return back(self._unnormalise(y), np.float64)

    def _tensors(self, device: torch.device) -> dict[str, Any]:
        key = str(device)
        if key not in self._cache:
            t = {"lo": torch.tensor(self.q_low, device=device)}
            t["hi"] = torch.tensor(self.q_high, device=device)
            t["span"] = t["hi"] - t["lo"]
            grip = np.zeros(self.action_dim, dtype=bool)
            for g in self.groups:
                if g.kind == "gripper":
                    grip[list(g.dims)] = True
            t["grip"] = torch.tensor(grip, device=device)
            t["edges"] = [[torch.tensor(e, device=device) for e in g.edges] for g in self.groups]
            t["tables"] = [_decode_table(g).to(device) for g in self.groups]
            perm = [d for g in self.groups for d in g.dims]
            t["inv_perm"] = torch.tensor(np.argsort(perm), device=device)
            self._cache[key] = t
        return self._cache[key]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        t = self._tensors(x.device)
        ok = t["span"] > 0  # constant dims: no spread, normalised to 0
        y = torch.where(ok, 2 * (x - t["lo"]) / torch.where(ok, t["span"], 1.0) - 1, 0.0).clamp(-1, 1)
        return torch.where(t["grip"], x, y)

    def _unnormalise(self, y: torch.Tensor) -> torch.Tensor:
        t = self._tensors(y.device)
        x = (y.clamp(-1, 1) + 1) / 2 * t["span"] + t["lo"]
        return torch.where(t["grip"], y, x)

    # ---- encode / decode
    def encode(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """actions (..., action_dim) -> int64 tokens (..., n_groups): numpy in -> numpy out, torch -> torch"""
        x, back = _as_torch(actions, torch.float64)
        if x.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in action_dim={self.action_dim}, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("actions contain NaN or inf; cannot encode them")
        y = self._normalise(x)
        t = self._tensors(x.device)
        toks = []
        for gi, g in enumerate(self.groups):
            if g.kind == "gripper":
                toks.append((x[..., g.dims[0]] > g.threshold).long())
                continue
            tok = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
            for c, e, n in zip(_components(y[..., list(g.dims)], g.kind), t["edges"][gi], g.bins):
                idx = torch.searchsorted(e[1:-1].contiguous(), c.contiguous(), right=True)  # bin in [0, n)
                tok = tok * n + idx  # row-major ('ij') ravel over the component grid
            toks.append(tok)
        return back(torch.stack(toks, dim=-1), np.int64)

    def decode(self, tokens: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32):
        """tokens (..., n_groups) -> actions (..., action_dim): midpoints, Cartesian, clip, un-normalise.

        Returns ``dtype`` (float32 by default; numpy in -> numpy out). Out-of-vocabulary tokens: ValueError.
        """
        tk, back = _as_torch(tokens, torch.long)
        if tk.shape[-1] != self.n_groups:
            raise ValueError(f"tokens must end in n_groups={self.n_groups}, got shape {tuple(tk.shape)}")
        bad = (tk < 0) | (tk >= torch.tensor(self.vocab_sizes, device=tk.device))
        if bool(bad.any()):
            gi = int(bad.nonzero()[0, -1])
            g = self.groups[gi]
            raise ValueError(f"token out of range for group {g.name!r} (vocab {g.vocab})")
        t = self._tensors(tk.device)
        # One gather per group from a (vocab, n_dims) table of decoded values: ~4x fewer ops than decoding the
        # midpoints per call, which matters on the policy's per-step path.
        parts = [t["tables"][gi][tk[..., gi]] for gi in range(self.n_groups)]  # (..., n_dims) each
        y = torch.cat(parts, dim=-1)[..., t["inv_perm"]]  # (..., action_dim) back in action-dim order
        return back(self._unnormalise(y).to(dtype), None)

    def decode_expected(self, probs: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-group token probabilities [(..., vocab_g)] -> actions (..., action_dim): each group's expected
        decoded value under its distribution (continuous between bin centres, where argmax decoding snaps to one;
        gripper groups keep their most likely token: open or closed), un-normalised."""
        if len(probs) != self.n_groups:
            raise ValueError(f"need probabilities for {self.n_groups} groups, got {len(probs)}")
        t = self._tensors(probs[0].device)
        parts = []
        for gi, (g, p) in enumerate(zip(self.groups, probs)):
            if p.shape[-1] != g.vocab:
                raise ValueError(f"group {g.name!r}: probabilities over {p.shape[-1]} tokens, vocab is {g.vocab}")
            table = t["tables"][gi].to(p.dtype)  # (vocab, n_dims), normalised space
            parts.append(table[p.argmax(-1)] if g.kind == "gripper" else p @ table)
        y = torch.cat(parts, dim=-1)[..., t["inv_perm"]]
        return self._unnormalise(y).to(dtype)

    # ---- re-discretising
    def rediscretize(self, new_grid: ActionGrid, embeddings, group: str | int | None = None):
        """Re-sample token embeddings of one group from this grid's bin centres to ``new_grid``'s.

        embeddings: (vocab, W) tensor/array for ``group`` (inferred when exactly one group has that vocab
        size), or a mapping group name -> embeddings (returns a mapping). Multilinear interpolation over the
        component axes, 'ij' (row-major) order as in ``encode``; centres outside the old range take the end
        value.
        """
        if isinstance(embeddings, Mapping):
            return {k: self.rediscretize(new_grid, v, k) for k, v in embeddings.items()}
        emb, back = _as_torch(embeddings, None)
        if group is None:
            hits = [g.name for g in self.groups if g.vocab == emb.shape[0]]
            if len(hits) != 1:
                raise ValueError(f"cannot infer the group of {emb.shape[0]}-row embeddings; pass group=")
            group = hits[0]
        old, new = self.group(group), new_grid.group(self.group(group).name)
        if old.kind != new.kind:
            raise ValueError(f"group {old.name!r} is {old.kind} here but {new.kind} in the new grid")
        if emb.dim() != 2 or emb.shape[0] != old.vocab:
            raise ValueError(f"embeddings for {old.name!r} must be ({old.vocab}, W), got {tuple(emb.shape)}")
        if old.kind == "gripper":
            return back(emb.clone(), None)
        out = emb.reshape(*old.bins, emb.shape[1])  # (n0, n1, n2, W) in 'ij' order
        for axis, (c_old, c_new) in enumerate(zip(old.centres(), new.centres())):
            M = torch.as_tensor(interp_matrix(c_old, c_new), dtype=emb.dtype, device=emb.device)
            out = torch.movedim(torch.tensordot(M, out, dims=([1], [axis])), 0, axis)
        return back(out.reshape(new.vocab, emb.shape[1]), None)

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            d: dict[str, Any] = {"name": g.name, "kind": g.kind, "dims": list(g.dims)}
            if g.kind == "gripper":
                d.update(threshold=g.threshold, values=list(g.values))
            else:
                d.update(bins=list(g.bins), mu=list(g.mu), sigma=list(g.sigma))
                d["edges"] = [e.tolist() for e in g.edges]
            groups.append(d)
        return {
            "format": FORMAT, "version": VERSION, "action_dim": self.action_dim,
            "quantiles": list(self.quantiles), "q_low": self.q_low.tolist(), "q_high": self.q_high.tolist(),
            "groups": groups,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActionGrid:
        """Inverse of ``to_dict``; a malformed dict raises UserError naming the field."""
        try:
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise UserError(f"action grid: format/version {d.get('format')!r}/{d.get('version')!r} "
                                f"is not {FORMAT!r}/{VERSION}")
            groups = []
            for i, g in enumerate(d["groups"]):
                dims = tuple(int(x) for x in g["dims"])
                gg = GroupGrid(name=str(g["name"]), kind=str(g["kind"]), dims=dims)
                if gg.kind == "gripper":
                    gg.threshold, gg.bins = float(g["threshold"]), (2,)
                    gg.values = tuple(map(float, g["values"]))
                elif gg.kind in RANGES:
                    gg.bins = tuple(int(b) for b in g["bins"])
                    gg.mu, gg.sigma = tuple(map(float, g["mu"])), tuple(map(float, g["sigma"]))
                    gg.edges = [np.asarray(e, dtype=np.float64) for e in g["edges"]]
                    ok = len(gg.edges) == len(gg.bins) == len(RANGES[gg.kind]) and all(
                        e.shape == (b + 1,) and np.all(np.diff(e) > 0) for e, b in zip(gg.edges, gg.bins))
                    if not ok:
                        raise UserError(f"action grid: groups[{i}].edges do not match bins {list(gg.bins)} "
                                        "or are not increasing")
                else:
                    raise UserError(f"action grid: groups[{i}].kind {gg.kind!r} is not one of {KINDS}")
                groups.append(gg)
            return cls(int(d["action_dim"]), groups, np.asarray(d["q_low"]), np.asarray(d["q_high"]),
                       tuple(d.get("quantiles", (0.01, 0.99))))
        except KeyError as e:
            raise UserError(f"action grid: missing field {e}") from None
        except UserError:
            raise
        except (TypeError, ValueError) as e:
            raise UserError(f"action grid: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (vla.files: temp file in the same directory + os.replace, mode 0644)."""
        from vla.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActionGrid:
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise UserError(f"action grid file not found: {os.fspath(path)}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"action grid file {os.fspath(path)} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def __repr__(self) -> str:
        parts = ", ".join(f"{g.name}{list(g.dims)}:{'x'.join(map(str, g.bins))}" for g in self.groups)
        return f"ActionGrid(action_dim={self.action_dim}, {parts})"


# ---- helpers
def _decode_table(g: GroupGrid) -> torch.Tensor:
    """(vocab, n_dims) float64: normalised action values of every token (raw values for a gripper)."""
    if g.kind == "gripper":
        return torch.tensor(g.values, dtype=torch.float64).view(2, 1)
    axes = torch.meshgrid(*[torch.from_numpy(c) for c in g.centres()], indexing="ij")  # 'ij' = encode's ravel
    comps = [a.reshape(-1) for a in axes]
    val = _from_spherical(*comps) if g.kind == "translation" else torch.stack(comps, dim=-1)
    return val.clamp(-1, 1)


def _components(y: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """Grid components of a group's normalised dims (..., n): spherical for translation, else the dims."""
    return _to_spherical(y) if kind == "translation" else list(y.unbind(-1))


def _normalise_np(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    ok = span > 0
    return np.where(ok, np.clip(2 * (a - lo) / np.where(ok, span, 1.0) - 1, -1, 1), 0.0)


def _as_numpy_2d(actions) -> np.ndarray:
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().double().numpy()
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"actions must be (N, action_dim) with N >= 1, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        cols = sorted({int(c) for c in np.nonzero(bad)[1]})
        raise ValueError(f"actions contain {int(bad.sum())} NaN/inf values (columns {cols})")
    return a


def _as_torch(x, dtype: torch.dtype | None):
    """(tensor, back) where back(result, np_dtype) returns numpy when the input was numpy."""
    if isinstance(x, torch.Tensor):
        return (x if dtype is None else x.to(dtype)), (lambda r, _dt: r)
    arr = np.asarray(x)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    def back(r: torch.Tensor, dt) -> np.ndarray:
        return r.numpy() if dt is None else r.numpy().astype(dt)

    return (t if dtype is None else t.to(dtype)), back
