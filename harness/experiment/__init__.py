"""Experiment files → cells: the strict YAML loader (`yaml_loader`), the schema dataclasses
(`schema`, no torch), loading with overrides (`load`) and sweep expansion (`sweep`).

May import: harness.engine.config (the train/eval sections), harness.data (dataset names),
models (families), and the shared bottom modules. Never harness.run or harness.report.
"""
