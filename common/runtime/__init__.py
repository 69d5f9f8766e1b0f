"""What every backend applies at run time, written once: the dtype names and argument checks of the
three entry points, the compiled-inference base, and — for the backends that compile with XLA (Flax,
Keras on JAX / TensorFlow) — the CPU thresholds and the fast-conv arithmetic over an array namespace
(``xla_conv``: the caller passes ``jax.numpy`` or ``keras.ops``) and Shuffle Attention's arithmetic
(``shuffle_attention``, the same way). Imports :mod:`common.spec` and
:mod:`common.errors` only; no framework.
"""
