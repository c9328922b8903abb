"""convert: a training checkpoint -> a transformers folder (safetensors + remote code + tokenizer + release.json).

Atomic (a temporary sibling folder, fsynced, then renamed) and deterministic (the same input gives the same bytes).
"""

from release.convert.folder import ConversionResult, convert_checkpoint, parse_size

__all__ = ["ConversionResult", "convert_checkpoint", "parse_size"]
