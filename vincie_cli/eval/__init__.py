"""Evaluation: MSE-Bench judging, MagicBrush metrics, the synthetic benchmark, reports and comparisons.

Modules import their heavy dependencies (torch, transformers, matplotlib) inside functions.
"""
