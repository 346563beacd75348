"""Instruction matching (vla.policy.instructions) against a numpy computation of the IDF-weighted word-embedding
match, and its use by the MLP head (unseen wording takes the behaviour of the training instruction it matches)."""

import math

import numpy as np
import pytest
import torch

from vla.clip import load_clip
from vla.errors import UserError
from vla.policy import PolicyConfig, VLAPolicy
from vla.policy.instructions import InstructionVocab

TRAIN = ["close the drawer", "open the drawer", "press the red button"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("vla-tiny")


def _words(clip, text):
    ids = clip.tokenize([text])[0]
    return ids[1: int(clip.eot_index(ids[None])[0])].tolist()


def _numpy_match(clip, train, text, temperature):
    E = clip.text_embeddings(torch.arange(clip.tokenize(["x"]).max() + 1)[None])[0].detach().numpy()
    df = {}
    for t in train:
        for w in set(_words(clip, t)):
            df[w] = df.get(w, 0) + 1

    def embed(t):
        ws = _words(clip, t)
        weights = np.array([math.log(len(train) / df[w]) if w in df else 0.0 for w in ws])
        if weights.sum() <= 0:
            weights = np.ones(len(ws))
        v = (E[ws] * weights[:, None]).sum(0) / weights.sum()
        return v / np.linalg.norm(v)

    ref = np.stack([embed(t) for t in sorted(train)])
    logits = ref @ embed(text) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


def test_match_equals_a_numpy_idf_weighted_word_embedding_match(clip):
    vocab = InstructionVocab.fit(TRAIN, clip, temperature=0.1)
    assert vocab.texts == sorted(TRAIN)
    assert vocab.idf[_words(clip, "the")[0]] == 0.0  # in every instruction: says nothing
    for text in ["shut the drawer", "press the button", "open the drawer", "zebra quantum"]:
        got = vocab.match([text], clip)[0].numpy()
        np.testing.assert_allclose(got, _numpy_match(clip, TRAIN, text, 0.1), rtol=1e-4, atol=1e-6)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)


def test_unseen_words_weigh_nothing_and_known_ones_decide(clip):
    vocab = InstructionVocab.fit(TRAIN, clip, temperature=0.002)
    # "shut" was never seen and "the" is in every instruction: only "drawer" is left, which the button lacks
    shut = dict(vocab.nearest("shut the drawer", clip, k=3))
    assert shut["close the drawer"] + shut["open the drawer"] > 0.99, shut
    assert vocab.nearest("please open that drawer", clip, k=1)[0][0] == "open the drawer"
    assert vocab.nearest("hit the red one", clip, k=1)[0][0] == "press the red button"
    back = InstructionVocab.from_dict(vocab.to_dict())
    assert back.texts == vocab.texts and back.idf == vocab.idf and back.temperature == vocab.temperature
    with pytest.raises(UserError, match="at least one training instruction"):
        InstructionVocab([], {})


def test_mlp_head_with_matching_acts_on_unseen_wording_as_on_its_match():
    cfg = PolicyConfig.tiny(keypoints=4, privileged_dim=6, vision_tokens=False, ego3d=False, action_head="mlp",
                            mlp_width=32, mlp_instruction="match")
    with pytest.raises(UserError, match="needs the training instructions"):
        VLAPolicy.from_config(cfg)
    probe = VLAPolicy.from_config(PolicyConfig.tiny())
    stats = dict(probe.stats, instructions=TRAIN)
    policy = VLAPolicy.from_config(cfg, stats=stats)
    with torch.no_grad():
        state, pos = torch.zeros(2, 4), torch.zeros(2, 6)
        base = policy(None, state, ["open the drawer", "press the red button"], positions=pos)[0]
        unseen = policy(None, state, ["please open that drawer", "hit the red one"], positions=pos)[0]
        torch.testing.assert_close(unseen, base, rtol=1e-3, atol=1e-3)  # a sharp softmax: nearly the match
        other = policy(None, state, ["close the drawer", "close the drawer"], positions=pos)[0]
        assert not torch.allclose(other, base, atol=1e-3)
    with pytest.raises(UserError, match="mlp_instruction='match' is invalid"):
        PolicyConfig.tiny(mlp_instruction="match")


def test_paraphrases_of_a_task_share_one_weight(clip):
    texts = TRAIN + ["shut the drawer"]
    groups = ["drawer-close", "drawer-open", "button", "drawer-close"]
    vocab = InstructionVocab.fit(texts, clip, temperature=0.1, groups=groups)
    assert vocab.group_names == ["button", "drawer-close", "drawer-open"]
    for text in ["push the drawer shut", "press it"]:
        per_text = _numpy_match(clip, texts, text, 0.1)  # over sorted(texts)
        by_group = {g: 0.0 for g in vocab.group_names}
        for t, w in zip(sorted(texts), per_text):
            by_group[dict(zip(texts, groups))[t]] += w
        np.testing.assert_allclose(vocab.match([text], clip)[0].numpy(), [by_group[g] for g in vocab.group_names],
                                   rtol=1e-4, atol=1e-6)
    assert InstructionVocab.from_dict(vocab.to_dict()).groups == vocab.groups
    with pytest.raises(UserError, match="one group"):
        InstructionVocab(["a", "b"], {}, groups=["x"])


def test_the_head_matches_each_instruction_once_and_reuses_it(monkeypatch):
    cfg = PolicyConfig.tiny(keypoints=4, privileged_dim=6, vision_tokens=False, ego3d=False, action_head="mlp",
                            mlp_width=32, mlp_instruction="match")
    policy = VLAPolicy.from_config(cfg, stats=dict(VLAPolicy.from_config(PolicyConfig.tiny()).stats,
                                                   instructions=TRAIN))
    policy.train()  # training too: the match has no gradient, and the word embeddings are frozen
    texts = ["open the drawer", "hit the red one", "open the drawer"]
    state, pos = torch.zeros(3, 4), torch.zeros(3, 6)
    first = policy(None, state, texts, positions=pos)[0]
    expected = policy.instruction_vocab.match(texts, policy.clip)
    torch.testing.assert_close(torch.stack([policy._match_cache[t] for t in texts]), expected)

    def boom(*a, **k):
        raise AssertionError("matched again")

    monkeypatch.setattr(policy.instruction_vocab, "match", boom)
    torch.testing.assert_close(policy(None, state, texts, positions=pos)[0], first)
    policy.eval()  # a mode change clears the cache: the next call matches afresh
    with pytest.raises(AssertionError, match="matched again"):
        policy(None, state, texts, positions=pos)


def test_a_loaded_policy_matches_with_its_own_word_embeddings(tmp_path):
    # load_policy builds the policy with random weights before loading its own: the training instructions'
    # reference embeddings must come from the loaded word embeddings, not from that random start
    cfg = PolicyConfig.tiny(keypoints=4, privileged_dim=6, vision_tokens=False, ego3d=False, action_head="mlp",
                            mlp_width=32, mlp_instruction="match")
    policy = VLAPolicy.from_config(cfg, stats=dict(VLAPolicy.from_config(PolicyConfig.tiny()).stats,
                                                   instructions=TRAIN))
    with torch.no_grad():  # as if the words had been trained: embeddings unlike any random start
        table = policy.clip._text.token_embedding.weight
        table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(7)))
    policy.save(tmp_path / "p")
    loaded = VLAPolicy.load(tmp_path / "p")
    seen = []
    loaded.action_mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    texts = ["shut the drawer", "hit the red one", "press the drawer", "open the red drawer"]
    with torch.no_grad():
        loaded(None, torch.zeros(4, 4), texts, positions=torch.zeros(4, 6))
    temperature = loaded.instruction_vocab.temperature
    expected = np.stack([_numpy_match(loaded.clip, TRAIN, t, temperature) for t in texts])
    np.testing.assert_allclose(seen[0][:, -len(TRAIN):].numpy(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded.instruction_match(texts), torch.from_numpy(expected).float(),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="needs an MLP head with mlp_instruction 'match'"):
        VLAPolicy.from_config(PolicyConfig.tiny()).instruction_match(texts)
