"""Instructions and task sets against Meta-World's own lists."""

import numpy as np
import pytest

from sim import language, schema


def test_tasks_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

    assert set(language.INSTRUCTIONS) == set(ALL_V3_ENVIRONMENTS)
    assert len(schema.all_tasks()) == 50
    assert schema.MT10 == tuple(MT10_V3)


@pytest.mark.parametrize("task", sorted(language.INSTRUCTIONS))
def test_paraphrases_are_valid_and_disjoint(task):
    train, heldout = language.paraphrases(task, "train"), language.paraphrases(task, "heldout")
    assert len(train) >= 3 and len(heldout) >= 2
    assert not set(train) & set(heldout)
    for text in train + heldout:
        assert 0 < len(text) <= language.MAX_LENGTH
        assert set(text) <= set(language.CHARSET), text


def test_choice_is_seeded_and_varies():
    picks = [language.choose_instruction("push-v3", s) for s in range(40)]
    assert picks == [language.choose_instruction("push-v3", s) for s in range(40)]
    assert set(picks) == set(language.paraphrases("push-v3"))  # 40 draws cover 4 options
    assert language.choose_instruction("push-v3", 3, "heldout") in language.paraphrases("push-v3", "heldout")


def test_bad_names_raise():
    with pytest.raises(ValueError, match="pushh"):
        schema.parse_tasks("reach,pushh")
    with pytest.raises(ValueError, match="nope"):
        language.paraphrases("push-v3", "nope")
    assert schema.parse_tasks("reach,push-v3") == ("reach-v3", "push-v3")
    assert schema.parse_tasks("MT10") == schema.MT10


def test_val_split_by_seed():
    seeds = np.arange(100)
    val = [s for s in seeds if schema.is_val_seed(int(s), 10)]
    assert val == list(range(9, 100, 10))
