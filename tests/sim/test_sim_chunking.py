"""Chunk execution and temporal ensembling against hand-computed weighted means."""

import math

import numpy as np
import pytest

from sim.chunking import ChunkEnsembler, ChunkQueue


def test_queue_executes_horizon_then_asks_again():
    q = ChunkQueue(num_envs=2, horizon=2, action_dim=1)
    assert q.needs_chunk().all()
    q.add(np.array([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]))
    np.testing.assert_array_equal(q.pop(), [[1.0], [4.0]])
    assert not q.needs_chunk().any()
    np.testing.assert_array_equal(q.pop(), [[2.0], [5.0]])
    assert q.needs_chunk().all()  # the third action is beyond the horizon
    q.add(np.array([[[7.0]]]), env_ids=[1])
    assert q.needs_chunk().tolist() == [True, False]
    with pytest.raises(RuntimeError):
        q.pop()


def test_ensembler_weights_newer_predictions_more():
    e = ChunkEnsembler(num_envs=1, action_dim=1, coef=0.8)
    e.add(np.array([[[0.0], [10.0], [20.0]]]))  # predicted at step 0
    np.testing.assert_allclose(e.pop(), [[0.0]])
    e.add(np.array([[[1.0], [11.0], [21.0]]]))  # predicted at step 1
    w_old, w_new = math.exp(-0.8), 1.0
    np.testing.assert_allclose(e.pop(), [[(w_old * 10.0 + w_new * 1.0) / (w_old + w_new)]], rtol=1e-6)
    e.add(np.array([[[2.0], [12.0], [22.0]]]))  # step 2: three predictions overlap
    w = np.exp(-0.8 * np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(e.pop(), [[(w @ [20.0, 11.0, 2.0]) / w.sum()]], rtol=1e-6)
    e.reset()
    with pytest.raises(RuntimeError):
        e.pop()


def test_ensembler_coef_zero_is_plain_mean_and_per_env():
    e = ChunkEnsembler(num_envs=2, action_dim=2, coef=0.0)
    e.add(np.zeros((2, 2, 2)))
    e.pop()
    e.add(np.full((1, 2, 2), 4.0), env_ids=[1])
    e.add(np.full((1, 2, 2), 2.0), env_ids=[0])
    np.testing.assert_allclose(e.pop(), [[1.0, 1.0], [2.0, 2.0]])


def test_bad_chunk_shape_raises():
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        ChunkQueue(2, 1).add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="horizon"):
        ChunkQueue(2, 0)
