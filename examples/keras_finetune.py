"""Fine-tune only the classifier of a ShuffleNet V2 x0.5 in Keras 3 on a 10-class problem (any Keras backend).

    python examples/keras_finetune.py                      # random (calibrated) ImageNet-shaped weights
    python examples/keras_finetune.py weights.safetensors  # canonical weights, e.g. from `groupnets convert`
    KERAS_BACKEND=jax python examples/keras_finetune.py    # also tensorflow (default) or torch

1. canonical weights (1000 classes) → a 10-class model with ``strict=False``: ``fc`` does not fit and is
   skipped (the LoadReport lists it), everything else loads;
2. ``freeze_backbone``: every layer but ``fc`` gets ``trainable=False`` — no gradients, no updates, and
   its BatchNorm runs in inference mode (running statistics used, never updated);
3. a few SGD steps (momentum 0.9, PyTorch's coupled L2 decay) on generated data via ``train_step_numpy``,
   printing the loss;
4. check that only ``fc.*`` changed in ``export_weights`` (backbone weights *and* BN buffers untouched),
   and take pre-logits features from ``feature_extractor``.

``train_step_numpy`` is the cross-framework bridge: each call is one step of a *fresh* optimiser (zero
momentum). A real Keras training loop keeps its optimiser state, e.g. ``model.compile(optimizer=
keras.optimizers.SGD(lr, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))``
and ``model.fit(...)`` — frozen layers are skipped there too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import keras  # noqa: E402

import common  # noqa: E402
import keras_impl  # noqa: E402

MODEL = "shufflenet_v2_x0_5"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="?", help="canonical .safetensors weights (default: random)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--size", type=int, default=64, help="input height = width (default 64)")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    if args.weights:
        weights, metadata = common.load_weights(args.weights)
        if metadata.get("model", MODEL) != MODEL:
            raise SystemExit(f"{args.weights} holds weights for {metadata['model']!r}, not {MODEL!r}")
        source = args.weights
    else:
        weights = common.random_weights(common.get_spec(MODEL), seed=0)
        source = "common.check.random (seed 0)"

    num_classes = 10
    keras.utils.set_random_seed(0)  # the fresh fc's initial values (Keras' default initializers)
    model = keras_impl.create_model(MODEL, num_classes=num_classes)
    # The 1000-way fc cannot fit a 10-class head: drop what does not fit, keep the fresh 10-way fc. (Shape
    # mismatches fail even with strict=False, by design; strict=False only tolerates missing / unexpected keys.)
    expected = common.canonical_params(model.spec)
    kept = {k: v for k, v in weights.items() if k not in expected or np.shape(v) == expected[k].shape}
    report = keras_impl.load_weights(model, kept, strict=False)
    print(f"Keras backend: {keras.backend.backend()}; weights: {source}")
    print(f"dropped (shape does not fit {num_classes} classes): {sorted(set(weights) - set(kept))}")
    print(f"LoadReport: missing={list(report.missing_keys)} unexpected={list(report.unexpected_keys)}")

    keras_impl.freeze_backbone(model)
    print(f"trainable variables: {[v.path for v in model.trainable_variables]}")
    before = keras_impl.export_weights(model)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)  # NHWC
    labels = rng.integers(0, num_classes, size=args.batch)
    for step in range(1, args.steps + 1):
        out = keras_impl.train_step_numpy(model, x, labels, lr=args.lr, momentum=0.9, weight_decay=1e-4)
        accuracy = float((out["logits"].argmax(-1) == labels).mean())
        print(f"step {step}: loss {out['loss']:.4f}  batch accuracy {accuracy:.2f}  trained {sorted(out['grads'])}")

    after = keras_impl.export_weights(model)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"], f"expected only fc.* to change, got {changed}"
    features = keras.ops.convert_to_numpy(keras_impl.feature_extractor(model)(x[:2], training=False))
    print(f"only {changed} changed; backbone weights and BatchNorm buffers untouched; "
          f"pre-logits features {features.shape}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
