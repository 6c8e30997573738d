"""The authors' released MXNet models, one job a module: `format` (the .params reader), `symbol`
(the -symbol.json graph → typed layers), `infer` (those layers → the igc-jax model config),
`convert` (the params arrays → igc-jax variables), `saved` (a converted model on disk) and
`pretrained` (a converted model ready to use).
"""
