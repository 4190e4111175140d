"""CUDA INT8 through torchao: eager fbgemm modules are CPU-only, so on a GPU the int8 weights are
handed to torchao's ``quantize_`` (Int8WeightOnlyConfig or Int8DynamicActivationInt8WeightConfig).

Per-row symmetric int8 re-quantized from ``q * scale`` gives back the same ``q`` and ``scale``
(absmax of each row is 127 * scale), so the GPU model runs the weights that were saved.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from whisper.model import Whisper

from .cpu import Int8TiedEmbedding, dequantize_weight

log = logging.getLogger(__name__)


class TorchaoTiedEmbedding(nn.Module):
    """Float lookup table plus a separate Linear for the logits that torchao can quantize."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.lookup = nn.Embedding.from_pretrained(weight, freeze=True)
        self.logits = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.logits.weight.copy_(weight)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lookup(tokens)

    def project(self, x: Tensor) -> Tensor:
        return self.logits(x)


def _torchao_config(scheme: str):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except ImportError as e:
        raise RuntimeError(f"INT8 on CUDA needs torchao (`pip install torchao`): {e}") from None
    return Int8WeightOnlyConfig() if scheme == "weight_only" else Int8DynamicActivationInt8WeightConfig()


def to_torchao(model: Whisper, scheme: str, device: str) -> Whisper:
    """Move an INT8 model (CPU modules) to ``device`` with torchao int8 Linear layers; returns it."""
    from torchao.quantization import quantize_

    config = _torchao_config(scheme)
    int8_names = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Int8TiedEmbedding):
            q, scale, _ = mod.int8_weight()
            new: nn.Module = TorchaoTiedEmbedding(dequantize_weight(q, scale))
            int8_names.append(f"{name}.logits")
        elif getattr(mod, "kind", None) == "int8":
            q, scale, bias = mod.int8_weight()
            new = nn.Linear(mod.in_features, mod.out_features, bias=bias is not None)
            with torch.no_grad():
                new.weight.copy_(dequantize_weight(q, scale))
                if bias is not None:
                    new.bias.copy_(bias)
            int8_names.append(name)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    model.to(device)
    wanted = set(int8_names)
    quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in wanted)
    log.info("torchao %s: %d int8 Linear layers on %s", type(config).__name__, len(wanted), device)
    return model
