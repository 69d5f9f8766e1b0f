"""Proof that the backends agree: the float64 NumPy oracle, random test weights and inputs, the
bounds and comparison, eval- and train-mode verification. The one layer of ``common`` that runs the
backends, loaded by name in :mod:`common.check.backends` (never imported at module level).
"""
