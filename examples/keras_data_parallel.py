"""Train a groupnets model with ``keras.distribution.DataParallel`` (Keras on JAX) and ``Model.fit``.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/keras_data_parallel.py
    KERAS_BACKEND=jax python examples/keras_data_parallel.py --coordinator HOST0:1234 --processes 2 --process-id I

groupnets adds nothing to the engine: set the distribution *before* building the model (its variables are
then laid out by it — replicated), compile, fit; Keras splits each batch over the devices. groupnets'
BatchNorm (PyTorch's rule) then normalises with the statistics of the *global* batch, as on one device
(tests/test_data_parallel.py; docs/data-parallel.md). ``keras.distribution`` runs on the JAX backend only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_impl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="global")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for several processes")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        raise SystemExit(f"keras.distribution needs KERAS_BACKEND=jax, not {keras.backend.backend()!r}")
    if args.coordinator:
        keras.distribution.initialize(args.coordinator, args.processes, args.process_id)

    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)  # the same initial weights in every process
    model = keras_impl.create_model(args.model, num_classes=args.classes)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    rng = np.random.default_rng(0)  # generated data standing in for a real data set (the same in every process)
    x = rng.standard_normal((64, args.size, args.size, 3)).astype(np.float32)  # NHWC
    y = rng.integers(0, args.classes, 64)
    batch = args.batch
    if args.processes > 1:  # NumPy data: each process feeds its own part (Keras auto-shards only tf.data)
        distribution.auto_shard_dataset = False
        x, y, batch = x[args.process_id::args.processes], y[args.process_id::args.processes], batch // args.processes
    history = model.fit(x, y, batch_size=batch, epochs=args.epochs, shuffle=False, verbose=0)
    print(f"{len(keras.distribution.list_devices())} devices; loss per epoch "
          f"{[round(v, 4) for v in history.history['loss']]}; {len(keras_impl.export_weights(model))} canonical tensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
