"""Training: `validate` (config checks before any compile), `sharding` (the mesh and batch
placement), `steps` (state, optimiser, the per-device train and eval steps), `checkpoint` (orbax,
corrupt-checkpoint handling), `metrics_log` (metrics.jsonl, TensorBoard, progress) and `loop`
(config → data → model → step → checkpoint).
"""
