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

# VQ-VAE model and artifacts (model engineer).
from vq.artifact import ArtifactError, load_tokenizer, save_tokenizer  # noqa: E402
from vq.config import AnyQuantizerConfig, FSQConfig, QuantizerConfig, VQConfig, VQVAEConfig  # noqa: E402
from vq.model import VQVAE, VQVAEOutput, build_quantizer  # noqa: E402
from vq.tokenizer import Tokenizer  # noqa: E402

__all__ += [
    "AnyQuantizerConfig",
    "ArtifactError",
    "FSQConfig",
    "QuantizerConfig",
    "VQConfig",
    "Tokenizer",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "build_quantizer",
    "load_tokenizer",
    "save_tokenizer",
]
