"""What a network is, before any weights: the IR, the model families and their channel tables, the
registry of names, canonical parameter names and shapes, the shuffle conventions, BN fusion, summaries.

Imports nothing from the rest of ``common`` but :mod:`common.errors`; plain Python + NumPy.
"""
