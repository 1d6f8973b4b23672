r"""A text attribute trained in the project, "code" versus "prose", and its classifier as a steering reward.

Labels (`code_labels`), on the pydoc corpus of `diffjax.data.text`. The text is cut into blocks,
maximal runs of non-blank lines. A block is *code* when

- one of its lines starts, after its indentation, with ">>>" or "(Pdb)": an interactive session,
  prompts and printed output alike; or
- its first line is indented (the text builder indents literal blocks) and the block, dedented,
  parses as Python (`ast.parse`), unless it is only expressions of literals (no name: strings such
  as '"x <= y" and "y >= x"' in a table) or one bare word (pdb's commands "step", "next").

Every character of a code block's lines, newlines included, is labelled 1; the rest 0. Indentation
alone does not separate code from prose here: lines indented by >= 3 spaces hold 41% of the 3.11
corpus's characters, and only 14% of those are code by this rule (the others are the bodies of
definitions, notes and lists). By the rule 5.6% of the corpus is code (26,047 of 465,033 characters:
Python examples, doctest and pdb sessions); left out are grammar rules ("classdef ::= ..."),
tables, shell lines and signatures such as "setdefault(key[, default])". A window of L characters
is code when most of its characters are (`window_labels`, aligned with `text.windows`).

Classifier (`AttributeClassifier`): logistic regression on a window's bag of character bigrams,

    logit(x) = b + (1/L) sum_{i=0}^{L-2} w[x_i V + x_{i+1}] 1[x_i != m and x_{i+1} != m],

a weight per bigram (V^2 = 9216 for text) and a bias. A bigram touching the mask m = V does not
count and the divisor stays L, so the logit is defined on partially masked states (those of a
masked-diffusion sampler) and tends to b as the mask grows. `fit_attribute_classifier` minimises
the class-weighted logistic loss (each class half the weight: code is rare) plus l2/2 |w|^2 with
optax's Adam, full batch, from zero, in one compiled `lax.scan` (the loss is convex).

Reward (`attribute_reward`): scale * log p(target | x) = scale * log sigmoid(+-logit(x)), a value
`reward(x, cond=None) -> (N,)` like `ngram.NGramReward` and `diffjax.steering.rewards`; the
classifier's arrays are leaves, so new weights reuse every compiled program.
`text_attribute_classifier` is the one call a config makes: labels, training windows, fit, held-out
accuracy (tests/test_attributes.py states the numbers).
"""

from __future__ import annotations

import ast
import functools
import math
import textwrap
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value
from diffjax.data import text as text_data
from diffjax.discrete.process import check_tokens

SESSION_PROMPTS = (">>>", "(Pdb)")


def _is_code_block(lines: list[str]) -> bool:
    """The block rule of the module docstring on one block (non-blank lines)."""
    if any(line.lstrip().startswith(SESSION_PROMPTS) for line in lines):
        return True
    if not lines[0].startswith(" "):
        return False
    if len(lines) == 1 and lines[0].strip().isidentifier():
        return False
    with warnings.catch_warnings():  # invalid escapes in prose-like strings warn
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(textwrap.dedent("\n".join(lines)))
        except (SyntaxError, ValueError):
            return False
    literals_only = all(isinstance(stmt, ast.Expr) for stmt in tree.body) and not any(
        isinstance(node, ast.Name) for node in ast.walk(tree)
    )
    return not literals_only


def code_labels(text: str) -> np.ndarray:
    """1 for every character on a line of a code block, else 0 (the rule of the module docstring).

    Args:
      text: any string (the corpus, or a part of it).

    Returns:
      int32 (len(text),) labels; a code line's newline is labelled with it, blank lines are 0.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    lines = text.split("\n")
    starts = np.cumsum([0] + [len(line) + 1 for line in lines])
    labels = np.zeros(len(text), np.int32)
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        if _is_code_block(lines[i:j]):
            labels[starts[i] : starts[j]] = 1  # up to and including the block's last newline
        i = j
    return labels


def window_labels(char_labels, length: int, *, stride: int | None = None) -> np.ndarray:
    """Whether each window is code: more than half of its characters are labelled 1.

    Args:
      char_labels: (T,) 0/1 labels of a text's characters (`code_labels`).
      length: L, the window length.
      stride: the step between windows (default L), as `diffjax.data.text.windows`.

    Returns:
      bool (N,), row n the label of `text.windows(tokens, length, stride=stride)[n]`.
    """
    char_labels = np.asarray(char_labels)
    if char_labels.ndim != 1 or not np.all((char_labels == 0) | (char_labels == 1)):
        raise ValueError(f"char_labels must be 1-D 0/1 labels, got shape {char_labels.shape}")
    return 2 * text_data.windows(char_labels, length, stride=stride).sum(axis=1) > length


@struct.dataclass(eq=False)
class AttributeClassifier(Value):
    """Logistic regression on character bigrams (formula in the module docstring); build it with
    `fit_attribute_classifier` or `text_attribute_classifier`.

    Attributes:
      weights: w (V * V,), the weight of bigram (u, v) at u V + v (leaf).
      bias: b, a scalar (leaf).
    """

    weights: jax.Array
    bias: jax.Array

    @property
    def vocab_size(self) -> int:
        """V, the number of clean tokens (the mask id is V)."""
        return math.isqrt(self.weights.shape[0])

    def logits(self, tokens):
        """The log-odds of "code" (N,) of token windows (N, L), the mask id V allowed (its bigrams are left
        out); tokens are checked when concrete (under tracing the caller guarantees ids in [0, V])."""
        if _checks.is_concrete(tokens):
            check_tokens("tokens", tokens, self.vocab_size, allow_mask=True)
        tokens = jnp.asarray(tokens)
        vocab_size = self.vocab_size
        first, second = tokens[:, :-1], tokens[:, 1:]
        counted = (first < vocab_size) & (second < vocab_size)
        terms = self.weights[jnp.where(counted, first * vocab_size + second, 0)]
        return jnp.sum(jnp.where(counted, terms, 0.0), axis=1) / tokens.shape[1] + self.bias


def _checked_labels(labels, num: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num,) or not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels must be ({num},) booleans or 0/1, one per window, got shape {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError(f"labels must hold both classes, got {int(labels.sum())} of {num} positive")
    return labels.astype(bool)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(classifier, tokens, labels, class_weights, learning_rate, l2, steps):
    optimizer = optax.adam(learning_rate)
    targets = labels.astype(classifier.weights.dtype)
    weights = jnp.where(labels, class_weights[1], class_weights[0])

    def loss(params):
        data = jnp.mean(weights * optax.sigmoid_binary_cross_entropy(params.logits(tokens), targets))
        return data + 0.5 * l2 * jnp.sum(params.weights**2)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (classifier, _), _ = jax.lax.scan(step, (classifier, optimizer.init(classifier)), None, length=steps)
    return classifier


def fit_attribute_classifier(
    tokens,
    labels,
    *,
    vocab_size: int = text_data.VOCAB_SIZE,
    steps: int = 300,
    learning_rate: float = 0.3,
    l2: float = 1e-5,
    balanced: bool = True,
) -> AttributeClassifier:
    """Fit the bigram logistic regression of the module docstring (optax Adam, full batch, from zero).

    Args:
      tokens: int (N, L) clean windows, ids in [0, vocab_size) (no mask).
      labels: (N,) booleans (or 0/1): True for the attribute ("code").
      vocab_size: V (default the text vocabulary's 96).
      steps: Adam steps, >= 1.
      learning_rate: Adam's step size, > 0.
      l2: the ridge penalty l2/2 |w|^2 (the bias is not penalised), >= 0.
      balanced: weight the loss so that each class counts half (else every window counts 1/N).

    Returns:
      The fitted `AttributeClassifier` (float64 under x64).

    Raises:
      ValueError: for bad tokens, labels of the wrong shape or with one class only, or bad options.
    """
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    check_tokens("tokens", tokens, vocab_size)
    labels = _checked_labels(labels, np.shape(tokens)[0])
    steps = _checks.positive_int("steps", steps)
    learning_rate = _checks.positive("learning_rate", learning_rate)
    l2 = _checks.finite("l2", l2)
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if not isinstance(balanced, bool):
        raise ValueError(f"balanced must be True or False, got {balanced!r}")
    rate = labels.mean()
    class_weights = [0.5 / (1.0 - rate), 0.5 / rate] if balanced else [1.0, 1.0]
    dtype = jnp.result_type(float)
    start = AttributeClassifier(jnp.zeros(vocab_size * vocab_size, dtype), jnp.zeros((), dtype))
    return _fit(
        start,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(labels),
        jnp.asarray(class_weights, dtype),
        jnp.asarray(learning_rate, dtype),
        jnp.asarray(l2, dtype),
        steps,
    )


@struct.dataclass(eq=False)
class AttributeReward(Value):
    """r(x) = scale * log p(target | x) under an `AttributeClassifier`; build it with `attribute_reward`.

    Attributes:
      classifier: the classifier (its arrays are leaves).
      scale: the multiplier (leaf).
      target: the attribute rewarded: True for "code", False for its absence (static).
    """

    classifier: AttributeClassifier
    scale: jax.Array
    target: bool = struct.field(pytree_node=False, default=True)

    def __call__(self, x, cond=None):
        del cond
        logits = self.classifier.logits(x)
        return jnp.asarray(self.scale, logits.dtype) * jax.nn.log_sigmoid(logits if self.target else -logits)


def attribute_reward(classifier: AttributeClassifier, *, target: bool = True, scale: float = 1.0) -> AttributeReward:
    """The classifier's log-probability of an attribute as a steering reward `reward(x, cond=None) -> (N,)`.

    Args:
      classifier: an `AttributeClassifier`.
      target: reward the attribute (True, "code") or its absence (False, "prose").
      scale: a finite multiplier (an inverse temperature).

    Returns:
      An `AttributeReward` value: scale * log sigmoid(+-logits(x)), defined on masked states too.
    """
    if not isinstance(classifier, AttributeClassifier):
        raise ValueError(f"classifier must be an AttributeClassifier, got {type(classifier).__name__}")
    if not isinstance(target, bool):
        raise ValueError(f"target must be True (code) or False (prose), got {target!r}")
    scale = _checks.finite("scale", scale)
    return AttributeReward(classifier, jnp.asarray(scale), target)


class AttributeFit(NamedTuple):
    """What `text_attribute_classifier` returns: the classifier, its held-out accuracy (threshold
    logit 0) and the held-out base rate (the fraction of code windows)."""

    classifier: AttributeClassifier
    accuracy: float
    base_rate: float


def text_attribute_classifier(
    length: int = 64,
    *,
    stride: int | None = None,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    steps: int = 300,
    learning_rate: float = 0.3,
    l2: float = 1e-5,
) -> AttributeFit:
    """The "code" classifier of pydoc text windows, fitted on the training topics, scored on the held-out ones.

    Args:
      length: L, the window length (the generated sequences' length).
      stride: the step between training windows (default L // 4: overlapping windows, more data);
        held-out windows do not overlap.
      held_out_fraction: the topic split's held-out fraction (`diffjax.data.text.split_text`).
      seed: the split's seed.
      steps: as `fit_attribute_classifier` (class-balanced).
      learning_rate: as `fit_attribute_classifier`.
      l2: as `fit_attribute_classifier`.

    Returns:
      `AttributeFit(classifier, accuracy, base_rate)` on the held-out windows.
    """
    length = _checks.positive_int("length", length, minimum=2)
    stride = max(1, length // 4) if stride is None else _checks.positive_int("stride", stride)
    train, held = text_data.split_text(held_out_fraction=held_out_fraction, seed=seed)
    x_train = text_data.windows(text_data.encode(train), length, stride=stride)
    y_train = window_labels(code_labels(train), length, stride=stride)
    classifier = fit_attribute_classifier(x_train, y_train, steps=steps, learning_rate=learning_rate, l2=l2)
    x_held = text_data.windows(text_data.encode(held), length)
    y_held = window_labels(code_labels(held), length)
    accuracy = float(np.mean((np.asarray(classifier.logits(x_held)) > 0) == y_held))
    return AttributeFit(classifier, accuracy, float(y_held.mean()))
