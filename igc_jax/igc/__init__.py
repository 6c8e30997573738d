"""The IGC layer (spec §1), bottom to top: `kernels` (the algebra as pure functions), `modes` (ways
to compute one layer, all equal), `native/` (the C++ kernels of mode `native`), `select`
(which mode `auto` uses, from an explicit `ModeContext`) and `layers` (the Flax modules: IGCConv,
PointwiseConv, BatchNorm). Each imports only those before it.
"""
