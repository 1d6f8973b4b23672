"""Character-level pydoc text (`diffjax.data.text`) and the add-k n-gram model (`diffjax.discrete.ngram`).

What is shown, and how exactly:
- vocabulary: the fixed ids of the module docstring, `decode(encode(s)) == s` for vocabulary strings
  and for the whole corpus (exact), `normalize` on each mapped / decomposed / dropped character
  (exact strings), strict `encode`;
- split: disjoint, complete and deterministic by topic, the texts are the topics' (exact);
- windows: hand examples and the dataset's windows equal slices of the encoded text (exact);
- batches: a pure function of (seed, step): rebuilt datasets give equal batches, which are the
  rows `ArrayBatches.indices` names (exact);
- n-gram: every context's probabilities sum to 1 over the vocabulary, V <= 96 terms each with a
  rounding error of a few ulp, so 1e-13 (float64); log p equals a hand count on a tiny corpus (1e-14,
  a few float64 roundings of small fractions); the reward is a value (equal fits equal and hash
  equal) compiled once for refitted models; on held-out pydoc text bigram perplexity < unigram
  perplexity < V (measured: 11.8 < 26.0 < 96 with k = 1 on CPython 3.11; asserted as inequalities,
  since the corpus follows the CPython version).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import text
from diffjax.discrete.ngram import fit, ngram_reward, unigram_bits_per_token

V = text.VOCAB_SIZE


# -- vocabulary -----------------------------------------------------------------------------------


def test_vocabulary_ids_are_the_fixed_table():
    assert V == 96 and text.MASK_ID == 96
    ids = text.encode("\n Aa~")
    np.testing.assert_array_equal(ids, [0, 1, 34, 66, 95])
    assert ids.dtype == np.int32
    assert text.decode(np.arange(V)) == text.VOCAB


def test_round_trip_vocabulary_string_and_corpus():
    s = "def f(x):\n    return {'a': x ** 2}  # ~`|\\\"\n"
    assert text.decode(text.encode(s)) == s
    corpus = text.corpus()
    assert text.decode(text.encode(corpus)) == corpus
    rows = text.encode("abcdef").reshape(2, 3)
    assert text.decode(rows) == ["abc", "def"]
    assert text.decode(np.array([1, text.MASK_ID, 34]), mask="?") == " ?A"


def test_normalize_maps_decomposes_and_drops():
    raw = "a\t\u2018b\u2019 \u201cc\u201d \u2026 \u2014 \u2013 \u00df \u00e9 \u00b0\r"
    assert text.normalize(raw) == "a 'b' \"c\" ... -- - ss e "
    assert text.normalize(text.VOCAB) == text.VOCAB


def test_corpus_is_the_normalised_topics_in_sorted_order():
    from pydoc_data.topics import topics as raw

    assert text.corpus() == text.normalize("".join(raw[k] for k in sorted(raw)))


@pytest.mark.parametrize("bad", ["caf\u00e9", "a\tb", "\u00b0"])
def test_encode_rejects_characters_outside_the_vocabulary(bad):
    with pytest.raises(ValueError, match="text must hold only vocabulary characters"):
        text.encode(bad)


def test_decode_rejects_ids_outside_vocabulary_and_mask():
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 96\]"):
        text.decode(np.array([0, 97]))
    with pytest.raises(ValueError, match="tokens must be integer ids"):
        text.decode(np.zeros((2, 2, 2), np.int32))


# -- split and windows ----------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_deterministic():
    train, held = text.split_topics()
    assert set(train).isdisjoint(held)
    assert sorted(train + held) == list(text.topics())
    assert len(held) == round(0.1 * len(text.topics()))
    assert text.split_topics() == (train, held)
    assert text.split_topics(seed=1) != (train, held)
    train_text, held_text = text.split_text()
    table = text.topics()
    assert train_text == "".join(table[k] for k in train)
    assert held_text == "".join(table[k] for k in held)
    assert len(train_text) + len(held_text) == len(text.corpus())


def test_windows_hand_examples():
    np.testing.assert_array_equal(text.windows(np.arange(10), 4), [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(text.windows(np.arange(10), 4, stride=3), [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    assert text.windows(np.arange(3), 4).shape == (0, 4)
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        text.windows(np.arange(3), 0)


DATA = text.dataset(length=16, batch_size=8, seed=3)


def test_dataset_windows_are_slices_of_the_text_in_range():
    train_text, held_text = text.split_text()
    x, eval_x = DATA.train_x, DATA.evaluation[0]
    assert x.dtype == np.int32 and x.shape == (len(train_text) // 16, 16) and DATA.event_shape == (16,)
    assert 0 <= x.min() and x.max() < V and 0 <= eval_x.min() and eval_x.max() < V
    np.testing.assert_array_equal(x.reshape(-1), text.encode(train_text)[: x.size])
    np.testing.assert_array_equal(eval_x.reshape(-1), text.encode(held_text)[: eval_x.size])
    assert DATA.held_out and DATA.evaluation[1] is None and DATA.num_classes is None


def test_batches_are_a_pure_function_of_seed_and_step():
    again = text.dataset(length=16, batch_size=8, seed=3)
    x, labels = DATA.batches(7)
    assert labels is None and x.shape == (8, 16) and x.dtype == jnp.int32
    np.testing.assert_array_equal(x, again.batches(7)[0])
    np.testing.assert_array_equal(x, DATA.train_x[DATA.batches.indices(7)])
    other = text.dataset(length=16, batch_size=8, seed=4)
    assert not np.array_equal(x, other.batches(7)[0])
    assert not np.array_equal(x, DATA.batches(8)[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"length": 0}, "data.length must be an integer >= 1"),
        ({"split": "test"}, "data.split must be one of"),
        ({"stride": -1}, "data.stride must be an integer >= 1"),
        ({"held_out_fraction": 0.9}, r"data.held_out_fraction must lie in \[0.0, 0.5\]"),
        ({"batch_size": 10**7}, "data.batch_size must be <= the"),
        ({"held_out_fraction": 0.0}, "data.held_out_fraction must be > 0 when split is 'train'"),
    ],
)
def test_dataset_bad_options_name_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        text.dataset(**{"batch_size": 8, **options})


# -- the n-gram model -----------------------------------------------------------------------------


def test_probabilities_sum_to_one_for_every_context():
    rng = np.random.default_rng(0)
    model = fit(rng.integers(0, 4, size=(3, 20)), vocab_size=5, order=3, k=0.3)  # token 4 never seen
    for j in (1, 2, 3):
        table = np.exp(np.asarray(model.conditional(j)))
        assert table.shape == (5,) * j
        np.testing.assert_allclose(table.sum(-1), 1.0, rtol=0, atol=1e-13)
    big = fit(text.encode(text.split_text()[1]), vocab_size=V, order=2, k=0.01)
    np.testing.assert_allclose(np.exp(np.asarray(big.conditional())).sum(-1), 1.0, rtol=0, atol=1e-13)


def test_log_prob_equals_a_hand_count():
    # rows [0 1 2 0] and [1 1 0 1]: unigrams 0:3 1:4 2:1 (8); bigrams inside rows 01:2 12:1 20:1 11:1 10:1
    # (the pair 0|1 across the row boundary is not counted), context sums u=0: 2, u=1: 3, u=2: 1.
    model = fit(np.array([[0, 1, 2, 0], [1, 1, 0, 1]]), vocab_size=3, order=2, k=0.5)
    np.testing.assert_array_equal(model.counts[0], [3, 4, 1])
    np.testing.assert_array_equal(model.counts[1], [[0, 2, 0], [1, 1, 1], [1, 0, 0]])
    x = np.array([[1, 2, 0], [0, 0, 1]])
    expected = [  # (count + k) / (context sum + k V), k V = 1.5
        np.log(4.5 / 9.5) + np.log(1.5 / 4.5) + np.log(1.5 / 2.5),
        np.log(3.5 / 9.5) + np.log(0.5 / 3.5) + np.log(2.5 / 3.5),
    ]
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(model.perplexity(x), np.exp(-np.sum(expected) / 6), rtol=1e-14)
    np.testing.assert_allclose(model.bits_per_token(x), -np.sum(expected) / 6 / np.log(2), rtol=1e-14)
    one = fit(np.array([0, 1, 2, 0, 1, 1, 0, 1]), vocab_size=3, order=1, k=0.5)  # a 1-D sequence
    np.testing.assert_allclose(one.log_prob(x[:1]), [np.log(4.5 / 9.5) + np.log(1.5 / 9.5) + np.log(3.5 / 9.5)],
                               rtol=0, atol=1e-14)  # fmt: skip


def test_order_three_uses_shorter_contexts_at_the_start():
    rng = np.random.default_rng(1)
    model = fit(rng.integers(0, 3, size=(4, 12)), vocab_size=3, order=3, k=0.7)
    x = np.array([[2, 0, 1, 1, 0]])
    p1, p2, p3 = (np.asarray(model.conditional(j)) for j in (1, 2, 3))
    expected = p1[2] + p2[2, 0] + p3[2, 0, 1] + p3[0, 1, 1] + p3[1, 1, 0]
    np.testing.assert_allclose(model.log_prob(x), [expected], rtol=0, atol=1e-14)
    np.testing.assert_allclose(model.log_prob(x[:, :1]), [p1[2]], rtol=0, atol=1e-15)


TRACES = []


@jax.jit
def _score(reward, x):
    TRACES.append(None)
    return reward(x)


def test_reward_is_a_jitted_value():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, size=(2, 30))
    a, b = ngram_reward(fit(data, vocab_size=4, order=2)), ngram_reward(fit(data, vocab_size=4, order=2))
    assert a == b and hash(a) == hash(b)
    other = ngram_reward(fit(data[::-1, ::-1], vocab_size=4, order=2, k=0.2))
    assert other != a and hash(other) == hash(a)  # same structure, other counts and k
    assert ngram_reward(a.model, per_token=True) != a
    x = jnp.asarray(rng.integers(0, 4, size=(5, 6)))
    before = len(TRACES)
    np.testing.assert_allclose(_score(a, x), a.model.log_prob(x), rtol=1e-15)
    np.testing.assert_allclose(_score(other, x), other.model.log_prob(x), rtol=1e-15)
    np.testing.assert_allclose(_score(b, x), _score(a, x), rtol=0)
    assert len(TRACES) - before == 1  # refitted counts and a new k are leaves: no recompilation
    per = ngram_reward(a.model, scale=2.0, per_token=True)
    np.testing.assert_allclose(per(x), 2.0 * a.model.log_prob(x) / 6, rtol=1e-15)


def test_heldout_perplexity_bigram_below_unigram_below_vocabulary():
    train_text, held_text = text.split_text()
    train, held = text.encode(train_text), text.windows(text.encode(held_text), 64)
    unigram = fit(train, vocab_size=V, order=1)
    bigram = fit(train, vocab_size=V, order=2)
    ppl1, ppl2 = float(unigram.perplexity(held)), float(bigram.perplexity(held))
    assert ppl2 < ppl1 < V, (ppl2, ppl1)
    np.testing.assert_allclose(unigram_bits_per_token(train, held, vocab_size=V), np.log2(ppl1), rtol=1e-12)


def test_ngram_bad_inputs():
    model = fit(np.array([0, 1, 2]), vocab_size=3)
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 3\) \(no mask token 3\)"):
        model.log_prob(np.array([[0, 3]]))
    with pytest.raises(ValueError, match="tokens must be a 2-D array of integer token ids"):
        model.log_prob(np.array([0, 1]))
    with pytest.raises(ValueError, match="tokens must be a 2-D array of integer token ids"):
        model.log_prob(np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="order must keep vocab_size\\*\\*order <= 16777216"):
        fit(np.array([0, 1]), vocab_size=96, order=4)
    with pytest.raises(ValueError, match="k must be > 0"):
        fit(np.array([0, 1]), vocab_size=3, k=0.0)
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 3\)"):
        fit(np.array([0, -1]), vocab_size=3)
    with pytest.raises(ValueError, match="model must be an NGram"):
        ngram_reward(lambda x: x)
    with pytest.raises(ValueError, match="j must be an order in 1..2"):
        model.conditional(3)
