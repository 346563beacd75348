"""Instruction matching: which of the instructions a policy was trained on does a new wording mean?

A policy trained on a few paraphrases per task meets unseen wording at test time ("shut the drawer" for "close
the drawer"). The small CLIP text tower, trained from nothing on the training captions, maps such wording poorly:
its nearest training paraphrase is another task's for 30-40% of MT10's held-out paraphrases. Matching by the
mean of the CLIP *word* embeddings, each word weighted by its inverse document frequency over the training
instructions (a word in every instruction says nothing; a word never seen in training weighs 0), finds the
right task for 90% of them (docs/policy_experiments.md). The MLP action head reads the soft match: a softmax of
the cosine similarities / `temperature` over the training instructions, summed within each task (paraphrases of a
task share their demonstrations; one code per instruction would split them four ways).

    vocab = InstructionVocab.fit(["close the drawer", "shut it", "open the drawer"], clip,
                                 groups=["drawer-close", "drawer-close", "drawer-open"])
    weights = vocab.match(["push the drawer shut"], clip)   # (1, 2) over the tasks, sums to 1
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from vla.errors import UserError

TEMPERATURE = 0.002  # near a hard match: sharper than 0.02 on held-out MT10 wording (rows V3, V4)


def _word_ids(texts: list[str], clip) -> list[list[int]]:
    ids = clip.tokenize(list(texts))
    eot = clip.eot_index(ids).tolist()
    return [row[1:e] for row, e in zip(ids.tolist(), eot)]  # without start and end of text


class InstructionVocab:
    """The training instructions and the IDF weight of every word id in them; JSON-able (`to_dict`)."""

    def __init__(self, texts: list[str], idf: dict[int, float], temperature: float = TEMPERATURE,
                 groups: list[str] | None = None):
        if not texts:
            raise UserError("an instruction vocabulary needs at least one training instruction")
        if groups is not None and len(groups) != len(texts):
            raise UserError(f"{len(groups)} groups for {len(texts)} instructions: one group (task) per instruction")
        self.texts, self.idf, self.temperature = list(texts), dict(idf), float(temperature)
        self.groups = list(texts) if groups is None else list(groups)
        self.group_names = sorted(set(self.groups))
        index = {g: i for i, g in enumerate(self.group_names)}
        self.membership = torch.zeros(len(texts), len(self.group_names))  # instruction -> its group
        self.membership[torch.arange(len(texts)), torch.tensor([index[g] for g in self.groups])] = 1.0

    @classmethod
    def fit(cls, texts, clip, temperature: float = TEMPERATURE, groups=None) -> InstructionVocab:
        """`groups`: the task of each instruction (paraphrases of one task share a group; None: each its own)."""
        pairs = sorted(set(zip(texts, texts if groups is None else groups)))
        texts = [t for t, _ in pairs]
        df: dict[int, int] = {}
        for words in _word_ids(texts, clip):
            for w in set(words):
                df[w] = df.get(w, 0) + 1
        return cls(texts, {w: math.log(len(texts) / n) for w, n in df.items()}, temperature,
                   [g for _, g in pairs])

    def to_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "groups": self.groups, "idf": [[w, v] for w, v in sorted(self.idf.items())],
                "temperature": self.temperature}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstructionVocab:
        return cls(d["texts"], {int(w): float(v) for w, v in d["idf"]}, d.get("temperature", TEMPERATURE),
                   d.get("groups"))

    @torch.no_grad()
    def embed(self, texts: list[str], clip) -> torch.Tensor:
        """(B, W) unit vectors: the IDF-weighted mean word embedding (plain mean when no word is known); fixed
        features (no gradient): the match is not trained."""
        table = clip.text_embeddings  # ids -> (.., W)
        out = []
        for words in _word_ids(texts, clip):
            ids = torch.tensor(words or [0], dtype=torch.long)
            w = torch.tensor([self.idf.get(i, 0.0) for i in ids.tolist()])
            if float(w.sum()) <= 0:
                w = torch.ones(len(ids))
            dev_ids = ids.to(clip_device(clip))
            e = table(dev_ids[None])[0].float()  # (n, W)
            out.append(F.normalize((e * w.to(e)[:, None]).sum(0) / w.sum().to(e), dim=0))
        return torch.stack(out)

    def match(self, texts: list[str], clip, reference: torch.Tensor | None = None) -> torch.Tensor:
        """(B, len(self.group_names)) weights summing to 1: the softmax over the training instructions, summed
        within each group (task); `reference` = embed(self.texts) when precomputed."""
        return self.match_instructions(texts, clip, reference) @ self.membership.to(clip_device(clip))

    def match_instructions(self, texts: list[str], clip, reference: torch.Tensor | None = None) -> torch.Tensor:
        """(B, len(self.texts)) softmax weights over the training instructions."""
        ref = self.embed(self.texts, clip) if reference is None else reference
        return torch.softmax(self.embed(texts, clip) @ ref.T / self.temperature, dim=-1)

    def nearest(self, text: str, clip, k: int = 3) -> list[tuple[str, float]]:
        """The k training instructions `text` is matched to most, with their weights (for diagnostics)."""
        w = self.match_instructions([text], clip)[0]
        top = torch.topk(w, min(k, len(self.texts)))
        return [(self.texts[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]


def clip_device(clip) -> torch.device:
    return next(clip.model.parameters()).device
