"""Where cells run: this machine (`local`: the runner's process, spawned jobs with their own
devices, torchrun ranks; `gpus` assigns devices, `torchrun_cell` runs one multi-GPU cell) and
Slurm through submitit (`slurm` submits and watches jobs, `slurm_job` runs inside each job,
`slurm_follow` is the runner's submit-and-follow loop). `cell_task` is one cell handed to another
process, the code torchrun ranks and Slurm tasks share; it and the local launcher import no
submitit (only `slurm`, `slurm_job` and `slurm_follow` do, imported where a run submits)."""
