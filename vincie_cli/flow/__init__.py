"""Flow matching (rectified flow, "lerp" schedule): timesteps, the Euler sampler with CFG, training-loss helpers.

Timesteps t run from 0 (data) to T = 1000 (noise); x_t = (1 - t/T)·x0 + (t/T)·ε and the model predicts
v = ε − x0. This package takes model callables and never imports `vincie_cli.model`.
"""
