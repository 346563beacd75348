"""VisionService against the same CLIP in-process: template and CoOp classification, embeddings."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla.client import RemotePolicy


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    from vla.clip import load_clip
    from vla.prompts.coop import PromptLearner
    from vla.serving.server import ServeConfig, ServerThread
    from vla.serving.vision_service import VisionModel

    clip = load_clip("vla-tiny")
    learner = PromptLearner(clip, classnames=["red cube", "blue ball", "green cup"], n_ctx=4).eval()
    path = tmp_path_factory.mktemp("coop") / "ctx.safetensors"
    learner.save(path)
    loaded = PromptLearner.load(path, clip).eval()
    srv = ServerThread(None, ServeConfig(port=0), VisionModel(clip, {"toys": loaded})).start()
    remote = RemotePolicy(f"127.0.0.1:{srv.port}", image_format="png")
    yield clip, learner, remote
    remote.close()
    srv.stop(0)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(n)]


def _features(clip, images):
    from PIL import Image

    x = torch.stack([clip.preprocess(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        return F.normalize(clip.encode_image(x)[0].float(), dim=-1)


def test_classify_templates_and_context(vision):
    from vla.zeroshot import class_probabilities

    clip, learner, remote = vision
    images = _images(3)
    names, templates = ["cat", "dog", "car", "tree"], ["a photo of a {c}.", "a drawing of a {}."]
    r = remote.classify(images, class_names=names, templates=templates, top_k=2)
    want = class_probabilities(clip, _features(clip, images), names, ["a photo of a {c}.", "a drawing of a {c}."])
    np.testing.assert_allclose(r["probabilities"], want, atol=1e-6)
    assert r["class_names"] == names
    for row, (labels, probs) in zip(want, r["top"]):
        top = np.argsort(-row, kind="stable")[:2]
        assert labels == [names[i] for i in top]
        np.testing.assert_allclose(probs, row[top], atol=1e-6)
    r = remote.classify(images, context_id="toys")
    want = class_probabilities(clip, _features(clip, images), learner=learner)
    np.testing.assert_allclose(r["probabilities"], want, atol=1e-6)
    assert r["class_names"] == ["red cube", "blue ball", "green cup"] and len(r["top"][0][0]) == 3


def test_embed(vision):
    clip, _, remote = vision
    images, texts = _images(2, seed=1), ["pick up the cube", "open the drawer"]
    img, txt = remote.embed(images, texts, normalize=True)
    np.testing.assert_allclose(img, _features(clip, images).numpy(), atol=1e-6)
    with torch.no_grad():
        want = F.normalize(clip.encode_text(texts).pooled.float(), dim=-1).numpy()
    np.testing.assert_allclose(txt, want, atol=1e-6)
    img, txt = remote.embed(texts=texts, normalize=False)
    with torch.no_grad():
        raw = clip.encode_text(texts).pooled.float().numpy()
    assert img is None and not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(txt, raw, atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    ({"class_names": ["a", "b"], "context_id": "nope"}, "context_id"),
    ({"class_names": []}, "class_names"),
    ({"class_names": ["a", "a"]}, "class_names[1]"),
    ({"class_names": ["a", " "]}, "class_names[1]"),
    ({"class_names": ["a", "b"], "templates": ["no placeholder"]}, "templates[0]"),
    ({"class_names": ["a", "b"], "top_k": -1}, "top_k"),
    ({"context_id": "toys", "class_names": ["x"]}, "class_names"),
])
def test_classify_invalid(vision, kwargs, field):
    _, _, remote = vision
    with pytest.raises(grpc.RpcError) as e:
        remote.classify(_images(1), **kwargs)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith(field)
    with pytest.raises(grpc.RpcError) as e:
        remote.classify([], class_names=["a"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images" in e.value.details()
