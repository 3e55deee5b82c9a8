"""`vincie annotate`: sampled video frames -> instruction-style transition annotations by a VLM.

prompt (the instruction), parse (reply -> validated annotation), backends (openai, transformers,
oracle) and runner (the resumable, sharded pipeline). Heavy imports stay inside functions.
"""
