"""The GPU check's parts (scripts/gpu_check.py runs them; docs/gpu.md describes them).

`plan` (sizes, counts, estimate, budgets), `supervise` (a child within its budget), `record`
(a section's figures and checks, the verdict, global settings), `context` (what a section is
told), `synthetic` (images made on the spot), and the sections: `precision` (peak,
bf16_vs_fp32, tf32), `harness_runs` (smoke, multi_gpu), `group` (distributed, with `rank_main`
for its torchrun ranks), `speed` (train_images_per_s, sample_images_per_s, train_compiled, with
`ar_steps` for bounded autoregressive sampling).
"""
