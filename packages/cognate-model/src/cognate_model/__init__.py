"""Cognate: TRM recursive refinement on a Titans-MAG backbone, as a Hugging Face model.

`CognateCache` is the generation cache (`generate()` builds one unless use_cache=False).
Importing the package registers `CognateConfig` with `AutoConfig` and `CognateForCausalLM`
with `AutoModelForCausalLM` (model_type "cognate").
"""

from .cache import CognateCache
from .configuration_cognate import PRESETS, SPECIALIZATIONS, CognateConfig
from .memory import linear_scan, linear_scan_reference
from .modeling_cognate import (
    CognateCausalLMOutput,
    CognateForCausalLM,
    CognateModel,
    CognateModelOutput,
    CognatePreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SPECIALIZATIONS",
    "CognateCache",
    "CognateCausalLMOutput",
    "CognateConfig",
    "CognateForCausalLM",
    "CognateModel",
    "CognateModelOutput",
    "CognatePreTrainedModel",
    "linear_scan",
    "linear_scan_reference",
]
