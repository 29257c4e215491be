"""Reference harness comparing very deep hierarchical VAEs with autoregressive image models.

Flow: experiments/*.yaml -> strict loader -> sweep cells -> data registry + model registry ->
train -> evaluate -> results/<experiment>/ rows -> report. See docs/results.md.
"""

__version__ = "0.1.0"
