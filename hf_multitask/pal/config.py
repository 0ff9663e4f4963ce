"""[`PalConfig`]: rank, g, placement and targeting of the Projected Attention Layers."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

G_CHOICES = ("identity", "attention")
PLACEMENTS = ("layer", "attention")
CONFIG_NAME = "adapter_config.json"

# Per encoder family, keyed by the path of its layers: the module inside each layer whose first input is the
# layer's input h, and the LayerNorm the term enters for each placement.
# BERT, RoBERTa, ELECTRA, XLM-R...: `encoder.layer.N`; DistilBERT: `transformer.layer.N`.
DEFAULT_TARGETS = {
    "encoder.layer": {"input": "attention", "layer": "output.LayerNorm", "attention": "attention.output.LayerNorm"},
    "transformer.layer": {"input": "attention", "layer": "output_layer_norm", "attention": "sa_layer_norm"},
}


@dataclass
class PalConfig:
    """Configuration of Projected Attention Layers (PALs).

    Stickland & Murray 2019, "BERT and PALs", [arXiv:1902.02671](https://arxiv.org/abs/1902.02671).

    Each task adds TS(h) = V_D g(V_E h) in parallel with every target layer, computed from the layer's input h:
    V_E: d -> r and V_D: r -> d (shared across layers by default), g the identity or multi-head self-attention in
    r dimensions (one per layer). V_D starts at zero, so a fresh PAL changes no output.

    Args:
        rank: r. The paper used 204 for d = 768; r scales with d, so the default 102 = 204 * 384 / 768 suits
            MiniLM (d = 384).
        g: `"identity"` (the CS224N study's low-rank term) or `"attention"` (the paper's projected attention).
        num_heads: Heads of g = attention; must divide `rank`. 6 heads of 102 keep the paper's 17 dims per head.
        shared_across_layers: One V_E/V_D per task for all layers (the paper), or one per layer.
        placement: `"layer"`: the term enters the layer's final LayerNorm, LN(a + FFN(a) + TS(h)) (the
            original PALs code); `"attention"`: the self-attention sublayer's, LN(h + SA(h) + TS(h)) (CS224N).
        layers_to_transform: Indices of the layers that get a PAL; `None` for all.
        tasks: Tasks that get a PAL; `None` for every task of the model (filled in when the PALs are added).
        layers_pattern: Dotted path, inside the encoder, of its `nn.ModuleList` of layers (e.g. `"encoder.layer"`);
            `None` finds it among the known families (BERT/RoBERTa, DistilBERT).
        target_modules: Dotted path, inside each layer, of the LayerNorm whose input gets the term (e.g.
            `"output.LayerNorm"`); `None` takes the family's module for `placement`. That module's first input
            must be the residual sum (`LN(x + sublayer(x))`, post-LN encoders).
        input_module: Dotted path, inside each layer, of the module whose first input is the layer's input h (and
            whose `attention_mask` g = attention uses); `None` takes the family's (`"attention"`). Read inside the
            layer's forward, so that gradient checkpointing's recomputation sees the same h.

    Example:

    ```python
    >>> from hf_multitask.pal import PalConfig
    >>> config = PalConfig(g="attention", placement="attention", tasks=["sst", "sts"])
    >>> config.rank, config.num_heads
    (102, 6)
    ```
    """

    rank: int = field(default=102, metadata={"help": "r, the projected dimension (204 for d = 768 in the paper)."})
    g: str = field(default="identity", metadata={"help": f"The function in r dims: one of {G_CHOICES}."})
    num_heads: int = field(default=6, metadata={"help": "Attention heads of g = attention (must divide rank)."})
    shared_across_layers: bool = field(default=True, metadata={"help": "One V_E/V_D per task for all layers."})
    placement: str = field(default="layer", metadata={"help": f"LayerNorm the term enters: one of {PLACEMENTS}."})
    layers_to_transform: list[int] | None = field(default=None, metadata={"help": "Layer indices; None for all."})
    tasks: list[str] | None = field(default=None, metadata={"help": "Tasks with a PAL; None for all."})
    layers_pattern: str | None = field(default=None, metadata={"help": "Path of the layers' ModuleList."})
    target_modules: str | None = field(default=None, metadata={"help": "Path of the LayerNorm inside a layer."})
    input_module: str | None = field(default=None, metadata={"help": "Path of the module that receives h."})

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"PalConfig.rank must be a positive integer, got {self.rank!r}")
        if self.g not in G_CHOICES:
            raise ValueError(f"PalConfig.g must be one of {G_CHOICES}, got {self.g!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"PalConfig.placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"PalConfig.num_heads must be a positive integer, got {self.num_heads!r}")
        if self.g == "attention" and self.rank % self.num_heads:
            raise ValueError(f"PalConfig.num_heads ({self.num_heads}) must divide PalConfig.rank ({self.rank})")
        if self.layers_to_transform is not None:
            self.layers_to_transform = [int(i) for i in self.layers_to_transform]
            if not self.layers_to_transform or min(self.layers_to_transform) < 0:
                raise ValueError("PalConfig.layers_to_transform must be a non-empty list of indices >= 0, "
                                 f"got {self.layers_to_transform}")
            if len(set(self.layers_to_transform)) != len(self.layers_to_transform):
                raise ValueError(f"PalConfig.layers_to_transform has duplicates: {self.layers_to_transform}")
        if self.tasks is not None:
            self.tasks = list(self.tasks)
            if not self.tasks or len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"PalConfig.tasks must be a non-empty list of distinct names, got {self.tasks}")

    @property
    def head_dim(self) -> int:
        return self.rank // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown PalConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike, **extra) -> None:
        """Write `adapter_config.json` (the fields, plus `extra` keys such as the base model's shape)."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump({"adapter_type": "PAL", **self.to_dict(), **extra}, f, indent=2)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> tuple[PalConfig, dict[str, Any]]:
        """`(config, extra)` from `directory/adapter_config.json`."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{directory} has no {CONFIG_NAME}: not a saved PAL adapter")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.pop("adapter_type", None) != "PAL":
            raise ValueError(f"{path} is not a PAL adapter config (adapter_type != 'PAL')")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        return cls.from_dict(data), extra
