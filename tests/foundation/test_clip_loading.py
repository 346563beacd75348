"""Weights from local files give the same features as the model they were saved from; bad files are refused."""

import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vla.clip import load_clip, resolve_model_name
from vla.errors import UserError


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(123)
    model = open_clip.create_model("vla-tiny")  # registered by importing vla.clip
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    tok = open_clip.get_tokenizer("vla-tiny")
    return torch.randn(2, 3, 32, 32, generator=g), tok(["a robot arm", "a red cube on a table"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_file_gives_identical_features(tmp_path, source_model, inputs, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source_model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # wrapper + DDP prefix
    clip = load_clip("vla-tiny", pretrained=str(path))
    images, ids = inputs
    with torch.no_grad():
        assert torch.equal(clip.encode_image(images)[0], source_model.encode_image(images))
        assert torch.equal(clip.encode_text_ids(ids).pooled, source_model.encode_text(ids))


class NotATensor:
    pass


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": NotATensor()}, path)
    with pytest.raises(UserError, match="refusing to load .*evil.pt"):
        load_clip("vla-tiny", pretrained=str(path))
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(NotATensor()))
    with pytest.raises(UserError, match="refusing to load"):
        load_clip("vla-tiny", pretrained=str(raw))


def test_torchscript_archive_is_refused_with_advice(tmp_path):
    path = tmp_path / "ViT-B-32-openai.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UserError, match="TorchScript"):
        load_clip("vla-tiny", pretrained=str(path))


def test_key_mismatch_names_keys(tmp_path, source_model):
    path = tmp_path / "partial.safetensors"
    state = {k: v.contiguous() for k, v in source_model.state_dict().items() if not k.startswith("visual.")}
    save_file(state, str(path))
    with pytest.raises(UserError, match="missing keys .*visual"):
        load_clip("vla-tiny", pretrained=str(path))


def test_missing_file_and_unknown_model():
    with pytest.raises(UserError, match="not found"):
        load_clip("vla-tiny", pretrained="/nonexistent/weights.safetensors")
    with pytest.raises(UserError, match="unknown model"):
        load_clip("no-such-model")


def test_openai_weights_pick_quickgelu():
    assert resolve_model_name("ViT-B-32", "openai") == "ViT-B-32-quickgelu"
    assert resolve_model_name("ViT-B-32", "/models/ViT-B-32-openai.safetensors") == "ViT-B-32-quickgelu"
    assert resolve_model_name("ViT-B-32", "laion2b_s34b_b79k") == "ViT-B-32"


def test_token_outputs(tiny_clip, inputs):
    import copy

    images, ids = inputs
    ref = copy.deepcopy(tiny_clip.model)
    ref.visual.output_tokens = False  # plain open_clip behaviour: pooled features only
    with torch.no_grad():
        pooled, tokens = tiny_clip.encode_image(images)
        text = tiny_clip.encode_text_ids(ids)
        ref_img = ref.encode_image(images)
        ref_txt = ref.encode_text(ids)
    assert tokens.shape == (2, (32 // 8) ** 2, 64)  # (B, P, W): 4x4 patches, width 64, no CLS
    assert torch.allclose(pooled, ref_img, atol=1e-6)
    assert text.tokens.shape == (2, 32, 64)
    assert torch.allclose(text.pooled, ref_txt, atol=1e-6)
    # mask: SOS + words + EOT are valid, padding is not
    assert text.mask[0].tolist() == [True] * 5 + [False] * 27  # "a robot arm" = 3 words
    assert text.mask[1].sum().item() == 2 + 6


def test_bad_device_is_named():
    with pytest.raises(UserError, match="'gpu' is not a torch device"):
        load_clip("vla-tiny", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_clip("vla-tiny", device="cuda")
