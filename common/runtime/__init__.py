"""What every backend applies at run time, written once: argument checks shared by the three entry
points, and the XLA CPU thresholds the channels-last backends compile by. Imports :mod:`common.spec`
and :mod:`common.errors` only; no framework.
"""
