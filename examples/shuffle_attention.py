"""Shuffle Attention (SA-Net) as a layer of your own network, in all three frameworks, with one set of weights.

    python examples/shuffle_attention.py

1. a PyTorch user's block (conv → BN → ``torch_impl.ShuffleAttention``) trains as usual; its attention
   layer's ``state_dict`` is the official ``sa_layer``'s (``cweight`` ... ``gn.bias``);
2. those canonical tensors load into the Keras layer (a functional model, saved and reloaded as ``.keras``
   with ``safe_mode=True``) and into the Flax module (inside a user's ``nnx.Module``) through the porting
   table, as every other primitive's do;
3. the three outputs agree (float32: within 1e-5 of the largest value).

Keras binds its backend at import: set ``KERAS_BACKEND`` (tensorflow, jax or torch) before running.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np
import torch
from flax import nnx

import flax_impl
import keras_impl
import torch_impl
from common.check.compare import compare
from common.spec import ir
from common.weights.porting import to_framework

CHANNELS, GROUPS = 256, 64

# 1. PyTorch: the layer in a user's block; a few SGD steps so the gates leave their initial values
block = torch.nn.Sequential(torch.nn.Conv2d(64, CHANNELS, 1, bias=False), torch.nn.BatchNorm2d(CHANNELS),
                            torch_impl.ShuffleAttention(CHANNELS, groups=GROUPS))
optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
for _ in range(5):
    optimizer.zero_grad()
    block(torch.randn(8, 64, 14, 14)).square().mean().backward()
    optimizer.step()
block.eval()
canonical = {k: v.detach().numpy() for k, v in block[2].state_dict().items()}
print("torch sa_layer keys:", ", ".join(f"{k} {tuple(v.shape)}" for k, v in canonical.items()))

x = np.random.default_rng(0).standard_normal((2, 64, 14, 14)).astype(np.float32)
with torch.no_grad():
    features = block[1](block[0](torch.from_numpy(x)))
    reference = block[2](features).numpy()
features_nhwc = features.numpy().transpose(0, 2, 3, 1)

# 2a. Keras: the registered layer in a functional model, weights through the porting table, a .keras round trip
node = ir.ShuffleAttention(CHANNELS, GROUPS)
keras_weights, _ = to_framework(node, "keras", canonical)  # {"cweight": (C/2G,), ..., "gamma", "beta"}
inputs = keras.Input((None, None, CHANNELS))
layer = keras_impl.ShuffleAttention(groups=GROUPS, name="sa")
model = keras.Model(inputs, layer(inputs))
for variable in layer.weights:
    variable.assign(keras_weights[variable.name])
with tempfile.TemporaryDirectory() as scratch:
    path = Path(scratch) / "sa.keras"
    model.save(path)
    model = keras.saving.load_model(path, safe_mode=True)  # registered layer: no Lambda, no pickled code
keras_out = keras.ops.convert_to_numpy(model(features_nhwc)).transpose(0, 3, 1, 2)


# 2b. Flax: the module inside a user's nnx.Module, weights through the same table
class Head(nnx.Module):
    def __init__(self) -> None:
        self.sa = flax_impl.ShuffleAttention.from_channels(CHANNELS, groups=GROUPS)

    def __call__(self, x):
        return self.sa(x)


head = Head()
variables = flax_impl.model_variables(head.sa)  # "cweight", ..., "gn.scale", "gn.bias"
for key, value in to_framework(node, "flax", canonical)[0].items():
    variables[key].set_value(value)
flax_out = np.asarray(head(features_nhwc)).transpose(0, 3, 1, 2)

# 3. the same function in all three
for name, out in (("keras", keras_out), ("flax", flax_out)):
    max_abs, max_rel = compare(out, reference)
    print(f"{name} vs torch: max |Δ| {max_abs:.2e}, relative {max_rel:.2e}")
    assert max_rel <= 1e-5
print(f"Keras backend: {keras.backend.backend()}; all three agree")
