"""ResNeSt backbones (torch/torchvision only, so it runs anywhere torch does)."""

from .config import ResNeStConfig
from .eval_config import resolve_eval_config
from .registry import VARIANTS, Variant, create_model, describe_model, get_variant, list_models, same_architecture
from .resnest import Bottleneck, FeatureInfo, ResNeSt
from .splat import RadixSoftmax, SplitAttentionConv2d
from .weights import IncompatibleCheckpointError, WeightsDownloadError, load_pretrained, read_checkpoint

__all__ = [
    "VARIANTS",
    "Bottleneck",
    "FeatureInfo",
    "IncompatibleCheckpointError",
    "RadixSoftmax",
    "ResNeSt",
    "ResNeStConfig",
    "SplitAttentionConv2d",
    "Variant",
    "WeightsDownloadError",
    "create_model",
    "describe_model",
    "get_variant",
    "list_models",
    "load_pretrained",
    "read_checkpoint",
    "resolve_eval_config",
    "same_architecture",
]
