"""Masked (absorbing-state) discrete diffusion: schedules, the forward process and SUBS, NELBOs,
samplers (ancestral with caching, first-hitting, and a noise-driven generator for searches), the
exact Markov-chain oracle, the clean-token predictions steering scores (`predicted`), and a
character n-gram language model (`ngram`: a baseline and a reward for steering text).

`diffjax.steering.fk_steer`, `importance_sample` and the searches run on token sequences unchanged:
see docs/discrete.md.

Tokens are int32 (B, L) in [0, V); the mask id is V. Time grows towards full masking; alpha(t)
is the keep probability. See each module's docstring for the math and the official code checked.
"""

from diffjax.discrete import (
    attributes,
    diversity,
    exact,
    loss,
    markov,
    ngram,
    predicted,
    process,
    rewards,
    samplers,
    schedules,
)
from diffjax.discrete.attributes import (
    AttributeClassifier,
    AttributeReward,
    attribute_reward,
    fit_attribute_classifier,
    text_attribute_classifier,
)
from diffjax.discrete.exact import ancestral_law, first_hitting_law
from diffjax.discrete.loss import (
    MaskedNELBO,
    bits_per_token,
    continuous_nelbo,
    discrete_nelbo,
    exact_continuous_nelbo,
    exact_discrete_nelbo,
    masked_nelbo,
)
from diffjax.discrete.markov import JointDraws, MarkovChain, MarkovDenoiser, joint_draws, markov_chain
from diffjax.discrete.ngram import NGram, NGramReward, ngram_reward, unigram_bits_per_token
from diffjax.discrete.predicted import MarginalDraws, argmax_tokens, marginal_draws
from diffjax.discrete.process import MaskedDenoiser, check_tokens, forward, masked_denoiser, subs
from diffjax.discrete.rewards import WordPresence, word_presence
from diffjax.discrete.samplers import (
    Ancestral,
    FirstHitting,
    TokenGenerator,
    all_masked,
    ancestral,
    cosine_grid,
    first_hitting,
    generator,
    sample,
    sample_first_hitting,
    uniform_grid,
)
from diffjax.discrete.schedules import (
    MaskingSchedule,
    log_linear,
    md4_cosine,
    md4_linear,
    md4_poly,
    mdlm_cosine,
    mdlm_linear,
)

__all__ = [
    "NGram",
    "NGramReward",
    "ngram",
    "ngram_reward",
    "unigram_bits_per_token",
    "Ancestral",
    "FirstHitting",
    "JointDraws",
    "MarginalDraws",
    "TokenGenerator",
    "argmax_tokens",
    "generator",
    "joint_draws",
    "marginal_draws",
    "predicted",
    "attributes",
    "exact",
    "AttributeClassifier",
    "AttributeReward",
    "attribute_reward",
    "fit_attribute_classifier",
    "text_attribute_classifier",
    "ancestral_law",
    "first_hitting_law",
    "diversity",
    "rewards",
    "WordPresence",
    "word_presence",
    "MarkovChain",
    "MarkovDenoiser",
    "MaskedDenoiser",
    "MaskedNELBO",
    "MaskingSchedule",
    "all_masked",
    "ancestral",
    "bits_per_token",
    "check_tokens",
    "continuous_nelbo",
    "cosine_grid",
    "discrete_nelbo",
    "exact_continuous_nelbo",
    "exact_discrete_nelbo",
    "first_hitting",
    "forward",
    "log_linear",
    "loss",
    "markov",
    "markov_chain",
    "masked_denoiser",
    "masked_nelbo",
    "md4_cosine",
    "md4_linear",
    "md4_poly",
    "mdlm_cosine",
    "mdlm_linear",
    "process",
    "sample",
    "sample_first_hitting",
    "samplers",
    "schedules",
    "subs",
    "uniform_grid",
]
