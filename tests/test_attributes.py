"""The "code" attribute of pydoc text and its bigram classifier as a steering reward (diffjax.discrete.attributes).

Labels are checked exactly on hand-written strings (each clause of the block rule, and what it
leaves out). The classifier is fitted once for the module on the training topics' windows (L = 64,
stride 16, 300 Adam steps) and scored on the 878 non-overlapping held-out windows: the base rate of
code windows there is 0.0786 (69), so always answering "prose" scores 0.921; the classifier scores
0.961 (measured), with balanced accuracy (the mean of the two classes' recalls, 0.5 by chance) 0.933.
The thresholds (accuracy at least 0.03 above the majority answer, balanced accuracy > 0.85) leave
room for another CPython's corpus. Reward identities (the formula, masks left out, the fully masked
window scoring the bias) hold to float64 rounding (1e-12), and new weights reuse the compiled program
(one trace, counted as in tests/test_values.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import text
from diffjax.discrete import attributes
from helpers import counting_jit

L = 64


def labels_of(s):
    return "".join(map(str, attributes.code_labels(s)))


def test_labels_follow_the_block_rule_on_hand_written_text():
    prose, code = "Prose, not code.\n\n", "   x = [1]\n   print(x)\n"
    assert labels_of(prose + code + "\nEnd.") == "0" * len(prose) + "1" * len(code) + "0" * 5
    session = "   >>> 1 + 1\n   2\n"  # a doctest session: the output line too
    assert labels_of("Example:\n\n" + session) == "0" * 10 + "1" * len(session)
    pdb = "   (Pdb) n\n   > example.py(4)<module>()\n"
    assert labels_of(pdb) == "1" * len(pdb)
    two_parts = "   class A:\n       pass\n\n       def f(self): pass"  # a blank line inside a literal block
    assert labels_of(two_parts) == "1" * 24 + "0" + "1" * 24
    # what is prose although indented or Python-like
    for s in (
        "object.f()\n\n   Called when the instance is created.\n",  # an indented definition body
        "x = 1\n",  # not indented: the text builder indents literal blocks
        "   step\n",  # one bare word (a pdb command)
        '   "x <= y" and "y >= x"\n',  # string literals only
        "   classdef ::= [decorators] class\n",  # grammar
    ):
        assert set(labels_of(s)) == {"0"}, s
    assert attributes.code_labels("").shape == (0,)


def test_window_labels_are_majorities_aligned_with_text_windows():
    chars = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(attributes.window_labels(chars, 4), [True, False])  # 3/4 code, 1/4
    np.testing.assert_array_equal(attributes.window_labels(chars, 2, stride=3), [True, False, False])  # 1/2 is not most
    corpus = text.corpus()
    rate = attributes.code_labels(corpus).mean()
    assert 0.03 < rate < 0.08, rate  # 5.6% of the 3.11 corpus (26,047 of 465,033 characters)


@pytest.fixture(scope="module")
def fitted():
    return attributes.text_attribute_classifier(L)


@pytest.fixture(scope="module")
def held_out():
    _, held = text.split_text()
    return text.windows(text.encode(held), L), attributes.window_labels(attributes.code_labels(held), L)


def test_held_out_accuracy_is_well_above_the_base_rate(fitted, held_out):
    classifier, accuracy, base_rate = fitted
    x, y = held_out
    assert 0.04 < base_rate < 0.15 and base_rate == y.mean()  # 0.0786 measured
    predicted = np.asarray(classifier.logits(x)) > 0
    np.testing.assert_allclose(accuracy, np.mean(predicted == y), rtol=0)
    assert accuracy > 1.0 - base_rate + 0.03, (accuracy, base_rate)  # 0.961 against 0.921 for "always prose"
    balanced = 0.5 * (predicted[y].mean() + (~predicted[~y]).mean())
    assert balanced > 0.85, balanced  # 0.933 measured (recall 0.899 on code, 0.967 on prose)


def test_the_reward_is_a_value_and_new_weights_reuse_the_program(fitted, held_out):
    classifier = fitted.classifier
    x = jnp.asarray(held_out[0][:32])
    reward = attributes.attribute_reward(classifier, scale=2.0)
    np.testing.assert_allclose(reward(x), 2.0 * jax.nn.log_sigmoid(classifier.logits(x)), rtol=1e-12)
    prose = attributes.attribute_reward(classifier, target=False)
    code = attributes.attribute_reward(classifier)
    np.testing.assert_allclose(np.exp(code(x)) + np.exp(prose(x)), 1.0, rtol=1e-12)  # p(code) + p(prose) = 1
    assert reward == attributes.attribute_reward(classifier, scale=2.0)
    assert jax.tree.structure(prose) != jax.tree.structure(code)  # the target is static
    retrained = classifier.replace(weights=-classifier.weights, bias=classifier.bias + 1.0)
    other = attributes.attribute_reward(retrained, scale=2.0)
    assert other != reward and hash(other) == hash(reward)
    assert jax.tree.structure(other) == jax.tree.structure(reward)
    score, traces = counting_jit(lambda r, x: r(x, None))
    np.testing.assert_allclose(score(reward, x), reward(x), rtol=1e-12)
    np.testing.assert_allclose(score(other, x), other(x), rtol=1e-12)
    assert not np.allclose(other(x), reward(x))
    assert len(traces) == 1


def test_masked_bigrams_are_left_out_exactly(fitted, held_out):
    classifier = fitted.classifier
    window = np.asarray(held_out[0][:3])
    masked = window.copy()
    masked[0, [0, 10, 11, 40]] = text.MASK_ID
    masked[1, 1::2] = text.MASK_ID  # every bigram touches a mask
    masked[2, :] = text.MASK_ID
    w, v = np.asarray(classifier.weights), text.VOCAB_SIZE
    expected = []
    for row in masked:  # the bigrams with both ends visible, each counted once, over L
        kept = [w[a * v + b] for a, b in zip(row[:-1], row[1:]) if a < v and b < v]
        expected.append(float(classifier.bias) + sum(kept) / L)
    np.testing.assert_allclose(classifier.logits(masked), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(classifier.logits(masked)[1:], float(classifier.bias), rtol=1e-12)  # no bigram left
    assert not np.allclose(classifier.logits(window[:1]), classifier.logits(masked[:1]))
    reward = attributes.attribute_reward(classifier)
    np.testing.assert_allclose(reward(masked), jax.nn.log_sigmoid(jnp.asarray(expected)), rtol=1e-12)


def test_bad_inputs_raise_naming_the_argument(fitted):
    classifier = fitted.classifier
    tokens = np.zeros((4, 8), np.int32)
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 96\]"):
        classifier.logits(np.full((1, 8), 97, np.int32))
    with pytest.raises(ValueError, match="tokens must be a"):
        classifier.logits(np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="mask token may not appear"):
        attributes.fit_attribute_classifier(np.full((4, 8), 96, np.int32), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels must hold both classes"):
        attributes.fit_attribute_classifier(tokens, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"labels must be \(4,\)"):
        attributes.fit_attribute_classifier(tokens, [0, 1])
    with pytest.raises(ValueError, match="steps"):
        attributes.fit_attribute_classifier(tokens, [0, 1, 0, 1], steps=0)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        attributes.fit_attribute_classifier(tokens, [0, 1, 0, 1], l2=-1.0)
    with pytest.raises(ValueError, match="classifier must be an AttributeClassifier"):
        attributes.attribute_reward(lambda x: x)
    with pytest.raises(ValueError, match="target must be True"):
        attributes.attribute_reward(classifier, target="code")
    with pytest.raises(ValueError, match="scale"):
        attributes.attribute_reward(classifier, scale=float("inf"))
    with pytest.raises(ValueError, match="text must be a str"):
        attributes.code_labels(b"x = 1")
    with pytest.raises(ValueError, match="char_labels must be 1-D 0/1"):
        attributes.window_labels(np.array([0, 2, 1]), 2)
    with pytest.raises(ValueError, match="length"):
        attributes.text_attribute_classifier(1)
