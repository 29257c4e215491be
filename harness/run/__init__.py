"""Running an experiment: the runner (`runner`), one cell (`cell`), the plan and its time
estimate (`plan`), the results folder (`results_folder`, by harness.contract), cell locks
(`locks`) and provenance records (`provenance`).

May import every layer below it: harness.experiment, harness.report, harness.engine,
harness.data, models. Only harness.cli imports it.
"""
