"""The engine: train and evaluate a model on uint8 image tensors. Configs (`config`, no torch),
budgets (`budget`), the training loop (`train`), evaluation (`evaluate`), checkpoints, LR/EMA
schedules, throughput and FLOPs, torchrun/DDP (`distributed`), and the codec reference rows.

Knows nothing of YAML or experiment files: it imports models and the shared bottom modules only.
"""
