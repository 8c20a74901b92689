"""What the batch's fork server imports once, so that every repo's process starts ready:
importing transformers takes seconds, a fork takes milliseconds."""

import huggingface_hub  # noqa: F401
import transformers.modeling_utils  # noqa: F401

import porter.hub  # noqa: F401
import porter.pipeline  # noqa: F401
import transforms  # noqa: F401
