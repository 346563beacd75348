"""VisionService: CLIP zero-shot (prompt templates) or CoOp (stored context) classification, and embeddings.

Requests carry their own batch of images, so each runs as one forward pass on the vision thread. A request whose
deadline passed, or whose caller cancelled, while it waited for that thread is dropped before decoding. Decoded
images are capped per image (codec.MAX_IMAGE_PIXELS) and per request (MAX_REQUEST_PIXELS) to bound memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla._proto.v1 import tensor_pb2 as tpb
from vla._proto.v1 import vision_pb2 as vpb
from vla._proto.v1 import vision_pb2_grpc
from vla.errors import UserError
from vla.serving.batcher import Expired
from vla.serving.codec import MAX_IMAGE_PIXELS, FieldError, decode_image, to_tensor
from vla.serving.metrics import Metrics
from vla.serving.rpc import deadline_of, unary

MAX_IMAGES, MAX_CLASSES, MAX_TEXTS, MAX_TEMPLATES, MAX_TEXT_CHARS = 64, 1000, 256, 100, 1000
MAX_REQUEST_PIXELS = 64 * 2**20  # all images of one request together (about 200 MB decoded)
DEFAULT_TEMPLATES = ("a photo of a {c}.",)


def _texts(values, field: str, limit: int, unique: bool = False) -> list[str]:
    if len(values) > limit:
        raise FieldError(field, f"{len(values)} entries > limit {limit}")
    out = []
    for i, v in enumerate(values):
        if not v.strip():
            raise FieldError(f"{field}[{i}]", "empty")
        if len(v) > MAX_TEXT_CHARS:
            raise FieldError(f"{field}[{i}]", f"{len(v)} characters > limit {MAX_TEXT_CHARS}")
        if unique and v in out:
            raise FieldError(f"{field}[{i}]", f"{v!r} repeated")
        out.append(v)
    return out


class VisionModel:
    """A ClipEncoder plus named CoOp contexts (`PromptLearner`s) built for it."""

    def __init__(self, clip, contexts: dict[str, Any] | None = None):
        self.clip = clip
        self.contexts = dict(contexts or {})

    @torch.no_grad()
    def image_features(self, images: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images -> (N, E) normalised features (open_clip preprocessing)."""
        from PIL import Image

        x = torch.stack([self.clip.preprocess(Image.fromarray(im)) for im in images])  # (N, 3, S, S)
        return F.normalize(self.clip.encode_image(x)[0].float(), dim=-1)

    @functools.lru_cache(maxsize=32)  # noqa: B019 (one VisionModel per server)
    def _template_weights(self, names: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
        from vla.zeroshot import template_classifier

        return template_classifier(self.clip, list(names), list(templates)).float()  # (E, C)

    @torch.no_grad()
    def classify(self, images, names, templates, context_id) -> tuple[np.ndarray, list[str]]:
        feats = self.image_features(images)
        scale = self.clip.logit_scale.float()
        if context_id:
            from vla.zeroshot import class_probabilities

            learner = self.contexts[context_id]
            return class_probabilities(self.clip, feats, learner=learner), list(learner.classnames)
        w = self._template_weights(tuple(names), tuple(templates))
        return torch.softmax(scale * feats @ w, dim=-1).numpy(), list(names)

    @torch.no_grad()
    def embed(self, images, texts, normalize: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        img = txt = None
        if images:
            from PIL import Image

            x = torch.stack([self.clip.preprocess(Image.fromarray(im)) for im in images])
            img = self.clip.encode_image(x)[0].float()
            img = F.normalize(img, dim=-1) if normalize else img
        if texts:
            txt = self.clip.encode_text(texts).pooled.float()
            txt = F.normalize(txt, dim=-1) if normalize else txt
        return (None if img is None else img.numpy()), (None if txt is None else txt.numpy())


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, model: VisionModel, metrics: Metrics):
        self.model, self.metrics = model, metrics
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vla-vision")

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _images(self, msgs, field: str, required: bool) -> list[np.ndarray]:
        if required and not len(msgs):
            raise FieldError(field, "no image")
        if len(msgs) > MAX_IMAGES:
            raise FieldError(field, f"{len(msgs)} images > limit {MAX_IMAGES}")
        out, used = [], 0
        for i, m in enumerate(msgs):
            budget = min(MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS - used)
            try:
                im = np.array(decode_image(m, f"{field}[{i}]", budget))
            except FieldError as e:
                if budget < MAX_IMAGE_PIXELS:  # say why the limit is lower than the per-image one
                    raise FieldError(e.field, f"{str(e).split(': ', 1)[1]} (request limit {MAX_REQUEST_PIXELS} "
                                              f"pixels, {used} used by images before it)") from None
                raise
            used += im.shape[0] * im.shape[1]
            out.append(im)
        return out

    def _check_classify(self, req) -> tuple[list, list[str], list[str], int]:
        images = self._images(req.images, "images", True)
        names = _texts(req.class_names, "class_names", MAX_CLASSES, unique=True)
        if req.context_id:
            if req.context_id not in self.model.contexts:
                raise FieldError("context_id", f"unknown context {req.context_id!r}; loaded: "
                                               f"{sorted(self.model.contexts)}")
            own = list(self.model.contexts[req.context_id].classnames)
            if names and names != own:
                raise FieldError("class_names", f"context {req.context_id!r} was built for {own}; leave empty")
            templates, n = [], len(own)
        else:
            if not names:
                raise FieldError("class_names", "empty (give class names or a context_id)")
            from vla.prompts.templates import normalize_template

            templates = []
            for i, t in enumerate(_texts(req.templates, "templates", MAX_TEMPLATES) or DEFAULT_TEMPLATES):
                try:
                    templates.append(normalize_template(t))
                except UserError as e:
                    raise FieldError(f"templates[{i}]", str(e)) from None
            n = len(names)
        if req.top_k < 0:
            raise FieldError("top_k", f"{req.top_k} must be >= 0")
        return images, names, templates, min(req.top_k or 5, n)

    def _classify(self, req) -> vpb.ClassifyResponse:
        t0 = time.perf_counter()
        images, names, templates, k = self._check_classify(req)
        t1 = time.perf_counter()
        probs, names = self.model.classify(images, names, templates, req.context_id)
        t2 = time.perf_counter()
        probs = probs.astype(np.float32)  # (N, C)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        reply = vpb.ClassifyResponse(probabilities=to_tensor(probs), class_names=names, top=[
            vpb.TopK(indices=row.tolist(), probabilities=probs[i, row].tolist(), labels=[names[j] for j in row])
            for i, row in enumerate(top)])
        reply.timing.CopyFrom(tpb.Timing(preprocess_ms=(t1 - t0) * 1e3, model_ms=(t2 - t1) * 1e3,
                                         total_ms=(time.perf_counter() - t0) * 1e3, batch_size=len(images)))
        return reply

    def _embed(self, req) -> vpb.EmbedResponse:
        t0 = time.perf_counter()
        images = self._images(req.images, "images", False)
        texts = _texts(req.texts, "texts", MAX_TEXTS)
        if not images and not texts:
            raise FieldError("images", "no image and no text to embed")
        t1 = time.perf_counter()
        img, txt = self.model.embed(images, texts, req.normalize)
        t2 = time.perf_counter()
        reply = vpb.EmbedResponse()
        if img is not None:
            reply.image_embeddings.CopyFrom(to_tensor(img))
        if txt is not None:
            reply.text_embeddings.CopyFrom(to_tensor(txt))
        reply.timing.CopyFrom(tpb.Timing(preprocess_ms=(t1 - t0) * 1e3, model_ms=(t2 - t1) * 1e3,
                                         total_ms=(time.perf_counter() - t0) * 1e3,
                                         batch_size=len(images) + len(texts)))
        return reply

    async def _run(self, work, request, context):
        """Run `work(request)` on the vision thread unless the RPC's deadline passed while it waited (a cancelled
        RPC cancels the queued executor future, which then never starts)."""
        deadline = deadline_of(context)

        def guarded():
            if deadline is not None and time.perf_counter() >= deadline:
                raise Expired("deadline passed while queued")
            return work(request)

        return await asyncio.get_running_loop().run_in_executor(self._executor, guarded)

    @unary("Classify")
    async def Classify(self, request, context):
        return await self._run(self._classify, request, context)

    @unary("Embed")
    async def Embed(self, request, context):
        return await self._run(self._embed, request, context)
