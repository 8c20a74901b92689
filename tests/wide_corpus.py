"""More legacy architectures, beyond the corpus that every CI run ports (tests/corpus.py).

Each entry is an in-library model of an old transformers release made into a remote-code
repo by `tests.corpus.legacy_model_repo`, with a tiny config. `benchmarks/sweep_architectures.py`
ports and verifies any subset and prints the outcome of each; `tests/test_wide_corpus.py`
does the same under pytest when `PORT_MODEL_WIDE_CORPUS=1`. The lists are grouped by family
so that each can grow on its own.
"""

from __future__ import annotations

from tests.corpus import DECODER, TOKENS, LegacyModel  # noqa: F401  (tiny configs to build on)

# Causal language models, first family (fused projections, ALiBi, parallel blocks, ...).
DECODERS_A: list[LegacyModel] = [
]


# Causal language models, second family (rotary variants, qk-norm, softcapping, ...).
DECODERS_B: list[LegacyModel] = [
]


# Older releases' styles (tuple caches, `_attn` helpers) of architectures beyond the corpus.
OLDER_RELEASES: list[LegacyModel] = [
]


# Bidirectional encoders and encoder-decoder models (ported, or refused with a diagnostic).
ENCODERS: list[LegacyModel] = [
]


# Mixture-of-experts models.
MIXTURE_OF_EXPERTS: list[LegacyModel] = [
]


WIDE_CORPUS: list[LegacyModel] = DECODERS_A + DECODERS_B + OLDER_RELEASES + ENCODERS + MIXTURE_OF_EXPERTS

# Remote code vendored in registry packages (tests/remote_corpus.py).
from tests.remote_corpus import REMOTE_CODE  # noqa: E402

WIDE_CORPUS = WIDE_CORPUS + REMOTE_CODE
