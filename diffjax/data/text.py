r"""Character-level English text that ships with CPython: the help topics of `pydoc_data.topics`.

The corpus is the dict `pydoc_data.topics.topics` (79 topics, about 465k characters in CPython 3.11:
the reference-manual sections `help()` shows), its strings joined in sorted-key order. It needs no
download; its exact content follows the CPython version (tests check properties, not byte counts).

Vocabulary (`VOCAB`, V = `VOCAB_SIZE` = 96, fixed, independent of the corpus): id 0 is the newline
and ids 1..95 are the printable ASCII characters ``chr(32) .. chr(126)`` in code order (space = 1,
"A" = 34, "a" = 66, "~" = 95). The masked-diffusion convention puts the mask at id V = 96
(`MASK_ID`), outside the vocabulary. `normalize` turns any text into vocabulary characters: tabs
become a space; the typographic characters of the corpus (curly quotes, dashes, the ellipsis, the
German sharp s) become their ASCII spelling (`REPLACEMENTS`); anything else is decomposed (NFKD, so
"e" with an accent becomes "e") and what is still outside the vocabulary (including carriage returns
and "°") is dropped. In the 3.11 corpus that maps 574 of the 464,970 characters (to 637) and drops 1 ("°").
`encode` is strict (a character outside the vocabulary is a ValueError); `decode(encode(s)) == s`
for every vocabulary string s.

Split: by topic, like `digits.train_test_split`: the first round(held_out_fraction * 79) topics of
``jax.random.permutation(jax.random.key(seed), 79)`` over the sorted keys are held out, the rest
train; each part is its topics' text joined in sorted-key order. No character of a held-out topic
is in the training text.

Windows: a text's token array cut into windows of `length` tokens starting at 0, stride, 2 stride,
... (stride = length: non-overlapping; the incomplete tail is dropped), int32 (N, length) in
[0, V). `dataset(...)` trains on the training windows (`ArrayBatches`: batch = f(seed, step),
sharded over a mesh's 'data' axis) and evaluates on the held-out windows (non-overlapping).
"""

from __future__ import annotations

import functools
import unicodedata

import jax
import numpy as np

from diffjax import _checks
from diffjax.data.dataset import Dataset
from diffjax.data.iterators import ArrayBatches

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB)
MASK_ID = VOCAB_SIZE
REPLACEMENTS = {
    "\t": " ",
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark
    "\u201c": '"',  # left double quotation mark
    "\u201d": '"',  # right double quotation mark
    "\u2026": "...",  # horizontal ellipsis
    "\u2014": "--",  # em dash
    "\u2013": "-",  # en dash
    "\u00df": "ss",  # sharp s
}
SPLITS = ("train", "all")

_ID = np.full(128, -1, np.int32)  # ASCII code -> token id (-1: not in VOCAB)
_ID[[ord(c) for c in VOCAB]] = np.arange(VOCAB_SIZE, dtype=np.int32)
_CHARS = np.array(list(VOCAB))


def normalize(text: str) -> str:
    """`text` with every character turned into vocabulary characters (see the module docstring).

    Args:
      text: any string.

    Returns:
      A string of `VOCAB` characters: `REPLACEMENTS` applied, other characters NFKD-decomposed and
      whatever is still outside the vocabulary dropped.
    """
    out = []
    for ch in text:
        if ch in REPLACEMENTS:
            out.append(REPLACEMENTS[ch])
        elif ord(ch) < 128 and _ID[ord(ch)] >= 0:
            out.append(ch)
        else:
            out.extend(c for c in unicodedata.normalize("NFKD", ch) if ord(c) < 128 and _ID[ord(c)] >= 0)
    return "".join(out)


def encode(text: str) -> np.ndarray:
    """The token ids of a vocabulary string.

    Args:
      text: a string of `VOCAB` characters (pass other text through `normalize` first).

    Returns:
      int32 (len(text),) ids in [0, VOCAB_SIZE).

    Raises:
      ValueError: naming the first character outside the vocabulary and its position.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    bad = np.flatnonzero((codes >= 128) | (_ID[np.minimum(codes, 127)] < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"text must hold only vocabulary characters (newline and printable ASCII; use normalize), "
            f"got {text[i]!r} at position {i}"
        )
    return _ID[codes].astype(np.int32)


def decode(tokens, *, mask: str = "\u2588") -> str | list[str]:
    """The text of token ids: a string for (L,) ids, a list of strings for (B, L).

    Args:
      tokens: integer ids in [0, VOCAB_SIZE], 1-D or 2-D; MASK_ID (= VOCAB_SIZE) is shown as `mask`.
      mask: the character that stands for a masked position (a full block by default).

    Returns:
      The decoded string, or one string per row.

    Raises:
      ValueError: if tokens are not integers of rank 1 or 2 in [0, VOCAB_SIZE].
    """
    ids = np.asarray(tokens)
    if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids of shape (L,) or (B, L), got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > MASK_ID):
        raise ValueError(f"tokens must lie in [0, {MASK_ID}] ({MASK_ID} is the mask), got [{ids.min()}, {ids.max()}]")
    chars = np.append(_CHARS, mask)
    if ids.ndim == 1:
        return "".join(chars[ids])
    return ["".join(row) for row in chars[ids]]


@functools.lru_cache(maxsize=1)
def topics() -> dict[str, str]:
    """The corpus: `pydoc_data.topics.topics`, normalised, as a dict sorted by key (cached)."""
    from pydoc_data.topics import topics as raw

    return {key: normalize(raw[key]) for key in sorted(raw)}


def corpus() -> str:
    """All topics' normalised text joined in sorted-key order."""
    return "".join(topics().values())


def split_topics(*, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The deterministic train / held-out split of the topics' keys.

    Args:
      held_out_fraction: in [0, 1); the first round(held_out_fraction * n) keys of
        ``jax.random.permutation(jax.random.key(seed), n)`` over the sorted keys are held out.
      seed: an integer >= 0.

    Returns:
      (train_keys, held_out_keys), each sorted, disjoint, together every topic.

    Raises:
      ValueError: for a fraction outside [0, 1) or a negative seed.
    """
    _checks.in_range("held_out_fraction", held_out_fraction, 0.0, 1.0)
    if held_out_fraction >= 1.0:
        raise ValueError(f"held_out_fraction must be < 1 (some topics must train), got {held_out_fraction!r}")
    _checks.positive_int("seed", seed, minimum=0)
    keys = tuple(topics())
    order = np.asarray(jax.random.permutation(jax.random.key(seed), len(keys)))
    held = set(order[: round(held_out_fraction * len(keys))].tolist())
    train = tuple(k for i, k in enumerate(keys) if i not in held)
    return train, tuple(k for i, k in enumerate(keys) if i in held)


def split_text(*, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[str, str]:
    """(train_text, held_out_text): each part's topics joined in sorted-key order (`split_topics`)."""
    train, held = split_topics(held_out_fraction=held_out_fraction, seed=seed)
    table = topics()
    return "".join(table[k] for k in train), "".join(table[k] for k in held)


def windows(tokens, length: int, *, stride: int | None = None) -> np.ndarray:
    """Fixed-length windows of a 1-D token array: rows tokens[i s : i s + length] for i = 0, 1, ...

    Args:
      tokens: (T,) integer ids.
      length: L >= 1, the window length.
      stride: s >= 1, the step between window starts (default L: non-overlapping). Windows that
        would run past the end are dropped.

    Returns:
      int32 (N, L) with N = (T - L) // s + 1 (0 rows when T < L).

    Raises:
      ValueError: for tokens that are not 1-D or a non-positive length or stride.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    length = _checks.positive_int("length", length)
    stride = length if stride is None else _checks.positive_int("stride", stride)
    n = 0 if len(tokens) < length else (len(tokens) - length) // stride + 1
    starts = np.arange(n)[:, None] * stride
    return tokens[starts + np.arange(length)[None, :]].astype(np.int32).reshape(n, length)


def dataset(
    *,
    length: int = 64,
    stride: int | None = None,
    split: str = "train",
    held_out_fraction: float = 0.1,
    batch_size: int,
    seed: int = 0,
    mesh=None,
    field: str = "data",
) -> Dataset:
    """The pydoc text as a `Dataset` of token windows (the `"text"` entry of `diffjax.data.REGISTRY`).

    Args:
      length: L, tokens per window (the event shape is (L,)).
      stride: the step between training window starts (default L: non-overlapping).
      split: "train" trains on the training topics and evaluates on the held-out ones (split seed 0,
        `held_out_fraction`); "all" trains and evaluates on every topic.
      held_out_fraction: the share of topics held out when split is "train", in (0, 0.5].
      batch_size: windows per training batch.
      seed: the data seed (epoch permutations of the windows, see `ArrayBatches`).
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      A finite, unconditional `Dataset`: batches `(x, None)` with x int32 (batch_size, L) in
      [0, VOCAB_SIZE); `train_x` the training windows; `evaluation` (held-out windows, None),
      non-overlapping.

    Raises:
      ValueError: naming `{field}.<option>` for a bad length, stride, split or fraction, or a
        batch size larger than the number of training windows.
    """
    length = _checks.positive_int(f"{field}.length", length)
    if stride is not None:
        _checks.positive_int(f"{field}.stride", stride)
    _checks.one_of(f"{field}.split", split, SPLITS)
    _checks.in_range(f"{field}.held_out_fraction", held_out_fraction, 0.0, 0.5)
    if held_out_fraction == 0.0 and split == "train":
        raise ValueError(f"{field}.held_out_fraction must be > 0 when split is 'train', got {held_out_fraction!r}")
    if split == "train":
        train_text, test_text = split_text(held_out_fraction=held_out_fraction)
    else:
        train_text = test_text = corpus()
    train_x = windows(encode(train_text), length, stride=stride)
    test_x = windows(encode(test_text), length)
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"{field}.length must leave at least one window in each part, got {length}")
    _checks.positive_int(f"{field}.batch_size", batch_size)
    if batch_size > len(train_x):
        raise ValueError(f"{field}.batch_size must be <= the {len(train_x)} training windows, got {batch_size}")
    batches = ArrayBatches((train_x, None), batch_size, seed, mesh)
    evaluation = (test_x, None)
    return Dataset(batches, (length,), None, None, lambda: evaluation, split == "train", train_x)
