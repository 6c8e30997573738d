"""The authors' released MXNet models: `format` (the .params reader), `convert` (symbol graph →
igc-jax model config and variables) and `pretrained` (a converted model ready to use).
"""
