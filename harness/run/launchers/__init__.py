"""Where cells run besides the runner's own processes: local GPUs (`gpus`) and Slurm through
submitit (`slurm` submits and watches, `slurm_job` is what runs inside each job)."""
