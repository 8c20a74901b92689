"""The smallest legacy remote-code repo: a config class and a model class with one linear layer.

Porting it exercises every stage (a transform applies, a `.bin` checkpoint is converted)
in a fraction of a second, which is what tests of a few hundred repos need.
"""

from __future__ import annotations

import io
import json

CONFIG = '''from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny"

    def __init__(self, hidden_size=4, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

MODELING = '''from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny import TinyConfig


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, inputs_embeds):
        return self.proj(inputs_embeds)
'''


def tiny_repo_files(seed: int = 0) -> dict[str, bytes]:
    """Files of a legacy repo with a `pytorch_model.bin` checkpoint (weights differ by seed)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"proj.weight": torch.randn(4, 4, generator=generator), "proj.bias": torch.zeros(4)}, buffer)
    config = {
        "model_type": "tiny", "architectures": ["TinyModel"], "hidden_size": 4, "transformers_version": "4.36.2",
        "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"},
    }
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "configuration_tiny.py": CONFIG.encode(),
        "modeling_tiny.py": MODELING.encode(),
        "pytorch_model.bin": buffer.getvalue(),
        "README.md": b"# tiny\n\nA legacy model.\n",
    }
