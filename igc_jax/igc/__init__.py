"""The IGC layer (spec §1), bottom to top: `kernels` (the algebra as pure functions), `modes` (ways
to compute one layer, all equal), `native/` (the C++ kernels of mode `native`), `select` (the
rules of `auto` and the `ModePlan` a network is built with) and `layers` (the Flax module
`IGCConv`, and `layer_shapes`, what a plan is decided from). Each imports only those before it.
"""
