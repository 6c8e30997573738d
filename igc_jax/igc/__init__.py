"""The IGC layer (spec §1), bottom to top: `kernels` (the algebra as pure functions), `modes` (ways
to compute one layer, all equal), `native/` (the C++ kernels of mode `native`), `select` (the
rules of `auto` and the `ModePlan` a network is built with), `layers` (the Flax module
`IGCConv`, and `layer_shapes`, what a plan is decided from), `depthwise` (IGCV3's depthwise conv,
with the modes `grouped` and `native`) and `kfactor` (IGCV2's layer, a product of K
structured-sparse kernels, with its path counts and balanced factors; `IGCConv` at K = 2).
Each imports only those before it.
"""
