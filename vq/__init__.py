"""vq: image-tokenizer quantizers, usage statistics, VQ-VAE model and artifacts.

Imports torch (and safetensors) only: no Lightning, no FastAPI.
"""

from vq.quantizers import FSQ, VectorQuantizer
from vq.search import nearest_code
from vq.types import Quantizer, QuantizerOutput
from vq.usage import CodebookUsage

__all__ = [
    "CodebookUsage",
    "FSQ",
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "nearest_code",
]
