"""Canonical weights: the porting table (canonical ⇄ each framework's names and layouts) and the
canonical safetensors file. Imports :mod:`common.spec` and :mod:`common.errors` only; no framework.
"""
