"""CoOp against the independent reference: open_clip's own encode_text on the written-out prompt."""

import pytest
import torch

from vla.errors import UserError
from vla.prompts.coop import PromptLearner

NAMES = ["cat", "fire truck", "x-ray machine", "sea_lion"]


def reference_prompts(position):
    names = [n.replace("_", " ") for n in NAMES]
    if position == "end":
        return [f"a photo of a {n}." for n in names]
    if position == "front":
        return [f"{n} a photo of a." for n in names]
    return [f"a photo {n} of a." for n in names]  # middle: half the context (2 of 4 tokens) before the class


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_ctx_init_equals_encode_text(tiny_clip, position):
    learner = PromptLearner(tiny_clip, classnames=NAMES, ctx_init="a photo of a", class_token_position=position)
    assert learner.n_ctx == 4
    with torch.no_grad():
        ours = learner.text_features()
        ref = tiny_clip.model.encode_text(tiny_clip.tokenize(reference_prompts(position)))
    assert ours.shape == (len(NAMES), tiny_clip.embed_dim)
    assert (ours - ref).abs().max().item() < 1e-5


def test_raw_open_clip_model_accepted(tiny_clip):
    learner = PromptLearner(tiny_clip.model, tiny_clip.tokenizer, NAMES, ctx_init="a photo of a")
    with torch.no_grad():
        ref = tiny_clip.model.encode_text(tiny_clip.tokenize(reference_prompts("end")))
        assert (learner.text_features() - ref).abs().max().item() < 1e-5


def test_instruction_encoding_matches_written_prompt(tiny_clip):
    learner = PromptLearner(tiny_clip, ctx_init="a photo of a")
    out = learner.encode_texts(["push the puck to the goal", "open the drawer."])
    with torch.no_grad():
        ref = tiny_clip.model.encode_text(
            tiny_clip.tokenize(["a photo of a push the puck to the goal.", "a photo of a open the drawer."]))
    assert (out.pooled - ref).abs().max().item() < 1e-5
    assert out.tokens.shape[:2] == out.mask.shape
    # valid tokens: SOS + 4 ctx + words + '.' + EOS
    assert out.mask[0].sum().item() == 1 + 4 + 6 + 1 + 1


@pytest.mark.parametrize("csc,cocoop", [(False, False), (True, False), (False, True)])
def test_one_step_changes_only_context(tiny_clip, csc, cocoop):
    torch.manual_seed(0)
    learner = PromptLearner(tiny_clip, classnames=NAMES, n_ctx=6, csc=csc, cocoop=cocoop)
    clip_before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    mine_before = {k: v.clone() for k, v in learner.state_dict().items()}
    assert set(mine_before) == ({"ctx"} | ({"meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight",
                                            "meta_net.2.bias"} if cocoop else set()))
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    learner.train()
    assert not tiny_clip.training and not tiny_clip.model.training  # CLIP stays in eval mode
    images = torch.randn(3, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(learner.logits(images), torch.tensor([0, 1, 2]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, v in tiny_clip.model.state_dict().items():
        assert torch.equal(v, clip_before[k]), f"CLIP parameter {k} changed"
    for k, v in learner.state_dict().items():
        assert not torch.equal(v, mine_before[k]), f"learned parameter {k} did not change"
    assert all(p.grad is None for p in tiny_clip.parameters())


def test_cocoop_features_depend_on_image(tiny_clip):
    learner = PromptLearner(tiny_clip, classnames=NAMES, n_ctx=4, cocoop=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(learner.meta_net[0].weight, std=1.0)
    torch.nn.init.constant_(learner.meta_net[0].bias, 1.0)  # hidden units active for both images
    torch.nn.init.normal_(learner.meta_net[2].weight, std=0.5)
    feats = torch.nn.functional.normalize(torch.randn(2, tiny_clip.embed_dim), dim=-1)
    with torch.no_grad():
        txt = learner.text_features(feats)
    assert txt.shape == (2, len(NAMES), tiny_clip.embed_dim)
    assert not torch.allclose(txt[0], txt[1])


def test_save_load_round_trip_and_mismatch(tiny_clip, tmp_path):
    torch.manual_seed(1)
    learner = PromptLearner(tiny_clip, classnames=NAMES, n_ctx=5, csc=True, class_token_position="middle")
    path = tmp_path / "ctx.safetensors"
    learner.save(path)
    loaded = PromptLearner.load(path, tiny_clip)
    assert loaded.classnames == [n.replace("_", " ") for n in NAMES]
    with torch.no_grad():
        assert torch.equal(loaded.text_features(), learner.text_features())
    with pytest.raises(UserError, match="classnames"):
        PromptLearner.load(path, tiny_clip, classnames=["dog", "cat"])
    from vla.clip import ClipEncoder

    other = ClipEncoder(tiny_clip.model, "ViT-B-32", tiny_clip.tokenizer)
    with pytest.raises(UserError, match="model_name"):
        PromptLearner.load(path, other)


def test_prompt_too_long_is_refused(tiny_clip):
    with pytest.raises(UserError, match="too long"):
        PromptLearner(tiny_clip, classnames=["a very long class name " * 4], n_ctx=16)
