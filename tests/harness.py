"""Test helpers: run one IR node in one framework, on shared weights and input, computed once per run.

Outputs come back NCHW / float64 via ``common.check.verify.run_framework`` — the same path users' verify
takes, so the tests exercise the product, not a test-only copy of it. Whole-network and training results
go through :mod:`store`: each is computed once per run of the suite and shared by the workers and the
Keras re-runs, so a pair test costs a comparison, not two forward passes.

A *party* is one implementation on one runtime: ``torch``, ``flax``, ``numpy`` (the float64 oracle) and
``keras[tensorflow]`` / ``keras[jax]`` / ``keras[torch]``. A process can compute every party except the
Keras backends it was not started with; those come from the store (``.ci/test`` runs the backends in
:data:`KERAS_BACKENDS` order, so each re-run finds the earlier ones there).
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np

import store
from common import get_spec, random_input, random_weights
from common.check.compare import BOUNDS, compare
from common.check.verify import run_framework
from common.spec import megvii
from common.weights.megvii import from_megvii

#: The order ``.ci/test`` runs the Keras backends in (the first is also the main run's).
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
#: ``bash .ci/test --full``: the exhaustive tier (docs/testing.md). Each file says what it adds.
FULL = os.environ.get("GROUPNETS_FULL") == "1"


def keras_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def keras_party(backend: str | None = None) -> str:
    return f"keras[{backend or keras_backend()}]"


def local_parties(oracle: bool = True) -> tuple[str, ...]:
    """The parties this process computes itself (``oracle=False``: the frameworks only, as in training)."""
    return ("torch", keras_party(), "flax", *(("numpy",) if oracle else ()))


def run_pairs(oracle: bool = True) -> tuple[tuple[str, str], ...]:
    """The pairs this pytest run checks, so that the three runs of ``.ci/test`` check every pair once.

    The main run (the first Keras backend) checks every pair of its own parties; a Keras re-run checks its
    Keras party against torch, flax, the oracle and — when the run shares a store with the earlier runs —
    the Keras backends that ran before it (read from the store; missing there is a failure)."""
    mine = keras_party()
    if keras_backend() == KERAS_BACKENDS[0]:
        return tuple(itertools.combinations(local_parties(oracle), 2))
    others = ["torch", "flax", *(("numpy",) if oracle else ())]
    if store.directory() is not None and keras_backend() in KERAS_BACKENDS:
        others += [keras_party(b) for b in KERAS_BACKENDS[:KERAS_BACKENDS.index(keras_backend())]]
    return tuple((mine, other) for other in others)


def pair_major(pairs, problems) -> list[tuple[tuple[str, str], object]]:
    """``(pair, problem)`` for every pair and problem: pair by pair, every other pair walking the problems
    backwards. xdist hands each worker a run of consecutive tests, often one pair each: walking the same
    problems in the same order, the two workers needed the same store entry at the same moment and one
    waited on the other's lock (38 s idle for ResNeXt-101 64x4d float64 on JAX); in opposite orders they
    meet once, in the middle."""
    problems = list(problems)
    return [(pair, problem) for k, pair in enumerate(pairs)
            for problem in (problems if k % 2 == 0 else problems[::-1])]


def _framework(party: str) -> str:
    """The ``run_framework`` name of a party, or a failure if this process cannot compute it."""
    if party.startswith("keras"):
        if party not in ("keras", keras_party()):
            raise AssertionError(f"{party} outputs are not in the test store ({store.ENV}); they are computed "
                                 f"by the pytest run with KERAS_BACKEND={party[6:-1]} (bash .ci/test runs it first)")
        return "keras"
    return party


def _party(name: str) -> str:
    return keras_party() if name == "keras" else name


def _producer(party: str) -> str | None:
    """The party, if another process computes its entries (another Keras backend): see ``store.cached``."""
    return party if party.startswith("keras[") and party != keras_party() else None


#: The entry of :func:`network_outputs` that holds the framework's own trainable-parameter count (not a tap).
TRAINABLE = "__trainable_parameters__"


#: The models Megvii's released checkpoints load into (a standard model or its ``_megvii`` twin) → the
#: released configuration. Their network tests run on a Megvii checkpoint (tests/fixtures/megvii_shufflenet.py,
#: converted by groupnets) at 224 x 224, the size the released weights are for, so every pair test of these
#: models also proves the converted weights; :func:`megvii_reference` holds Megvii's own outputs there.
MEGVII_MODELS: dict[str, str] = {megvii.target_model(name): name for name in megvii.RELEASED}
MEGVII_SIZE, MEGVII_BATCH = (224, 224), 1


def network_size(model: str) -> tuple[int, int]:
    """The input size a model's network tests use: 224 x 224 for Megvii's released configurations, else
    test_networks.SMALL (its docstring says what that size proves; the other models of the same block kinds
    prove it for these)."""
    return MEGVII_SIZE if model in MEGVII_MODELS else (64, 49)


def network_batch(model: str) -> int:
    return MEGVII_BATCH if model in MEGVII_MODELS else 2


def megvii_checkpoint(standard: str) -> dict[str, np.ndarray]:
    """Megvii's state_dict (their keys, float64) of a random, BN-calibrated network of configuration
    ``standard``, once per suite run."""
    def compute() -> dict[str, np.ndarray]:
        from fixtures.megvii_shufflenet import megvii_state_dict, random_megvii_model
        return dict(megvii_state_dict(random_megvii_model(standard)))
    return store.cached(("megvii-checkpoint", standard), compute)


def megvii_reference(standard: str, dtype: str) -> np.ndarray:
    """Megvii's own model's logits on the network tests' input, computed in ``dtype`` by their module."""
    def compute() -> dict[str, np.ndarray]:
        import torch
        from fixtures.megvii_shufflenet import MegviiShuffleNet, megvii_logits
        model = MegviiShuffleNet(standard).double()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in megvii_checkpoint(standard).items()})
        x = random_input((MEGVII_BATCH, 3, *MEGVII_SIZE), seed=2, dtype="float64")
        return {"logits": megvii_logits(model.eval(), x, dtype)}
    return store.cached(("megvii-reference", standard, dtype), compute)["logits"]


@functools.lru_cache(maxsize=1)
def network_weights(model: str, num_classes: int = 1000) -> dict[str, np.ndarray]:
    """The float64 weights every party of ``model`` runs on (seed 1), drawn once for consecutive entries of
    one model: ResNeXt-101 32x8d's take 4.6 s (BatchNorm calibration through the oracle), and a worker
    computed them again for each party and dtype — 86 CPU-s of the main run over all models. One entry
    (700 MB for ResNeXt-101 in float64): tests go model by model. Read-only: parties copy what they cast.

    For :data:`MEGVII_MODELS` (1000 classes): a Megvii checkpoint converted by ``common.weights.megvii``."""
    if model in MEGVII_MODELS and num_classes == 1000:
        target, weights = from_megvii(megvii_checkpoint(MEGVII_MODELS[model]), model)
        assert target == model, f"a Megvii {MEGVII_MODELS[model]} checkpoint loaded into {target}, not {model}"
        return weights
    return random_weights(get_spec(model, num_classes), seed=1, dtype="float64")


def network_outputs(framework: str, model: str, dtype: str, size: tuple[int, int], num_classes: int = 1000,
                    batch: int = 2) -> dict[str, np.ndarray]:
    """Every tap of ``model`` run by one party (``"keras"`` = this process's Keras backend), once per run,
    plus :data:`TRAINABLE` (what that framework counts as trainable parameters; not for the oracle)."""
    party = _party(framework)
    key = ("network", party, model, dtype, tuple(size), num_classes, batch)

    def compute() -> dict[str, np.ndarray]:
        spec = get_spec(model, num_classes)
        weights = network_weights(model, num_classes)
        x = random_input((batch, 3, *size), seed=2, dtype="float64")
        counted: dict[str, np.ndarray] = {}

        def count(backend, net) -> None:  # the framework's own count, from the model built here anyway
            counted[TRAINABLE] = np.asarray(trainable_parameter_count(_framework(party), net))

        outputs = run_framework(_framework(party), spec, weights, x, dtype, taps=True, on_model=count)
        return {**outputs, **counted}

    return store.cached(key, compute, _producer(party))


def primitive_output(framework: str, node: object, x_shape: tuple[int, ...], dtype: str,
                     seed: int = 0) -> np.ndarray:
    """``node`` run by one party on weights ``seed`` and input ``seed + 1``, once per run (through the
    store): a primitive test checks one party against all others, so each party's result is needed by the
    test of every other party, and by each Keras re-run."""
    party = _party(framework)
    key = ("primitive", party, repr(node), tuple(x_shape), dtype, seed)

    def compute() -> dict[str, np.ndarray]:
        weights = random_weights(node, seed, "float64")
        x = random_input(x_shape, seed + 1, "float64")
        return {"output": run_framework(_framework(party), node, weights, x, dtype)["output"]}

    return store.cached(key, compute, _producer(party))["output"]


def assert_close(a: np.ndarray, b: np.ndarray, dtype: str, what: str) -> tuple[float, float]:
    max_abs, max_rel = compare(a, b)
    assert max_rel <= BOUNDS[dtype], f"{what}: max rel {max_rel:.3e} > {BOUNDS[dtype]:.0e} (max |Δ| {max_abs:.3e})"
    return max_abs, max_rel


def to_tensor(framework: str, x: np.ndarray):
    """A framework tensor holding ``x`` (already in that framework's layout)."""
    if framework == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(x))
    if framework == "keras":
        import keras
        return keras.ops.convert_to_tensor(x)
    import jax.numpy as jnp
    return jnp.asarray(x)


def to_numpy(framework: str, t) -> np.ndarray:
    if framework == "torch":
        return t.detach().numpy()
    if framework == "keras":
        import keras
        return np.asarray(keras.ops.convert_to_numpy(t))
    return np.asarray(t)


def trainable_parameter_count(framework: str, model) -> int:
    """What each framework itself reports as trainable parameters."""
    if framework == "torch":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if framework == "keras":
        return int(sum(np.prod(v.shape) for v in model.trainable_weights))
    import jax
    from flax import nnx
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))))


def native_layout(framework: str, x_nchw: np.ndarray) -> np.ndarray:
    return x_nchw if framework == "torch" else x_nchw.transpose(0, 2, 3, 1)


TRAIN_SHAPE = (4, 3, 128, 128)  # every BN sees >= 64 values per channel (see common.check.train_verify)
#: Steps on the batch (lr 0.1, momentum 0.9, weight decay 1e-4): two, as ``groupnets verify --mode train``
#: takes, because coupled and decoupled weight decay differ only from the second step on.
TRAIN_STEPS = 2
TRAIN_HYPER = (0.1, 0.9, 1e-4)


def train_steps(freeze: bool) -> int:
    """:data:`TRAIN_STEPS`; one for the frozen backbone (what it proves — only ``fc`` moves, BatchNorm pinned
    — a step shows; the optimiser is checked by the full problems)."""
    return 1 if freeze else TRAIN_STEPS


#: The training problems: one network per family, 10 classes, holding every block kind of its family —
#: V2 and V1 (g3, 0.5x widths) with one stride-2 and one stride-1 unit in stage 3 (stages 2 and 4: the
#: stride-2 unit; V1's stage 2 keeps its ungrouped first 1x1), ResNeXt with one bottleneck per stage
#: (downsample + grouped 3x3 at stride 1 and 2) whose layer2 and layer4 bottlenecks carry Shuffle Attention
#: (SA-Net's unit, 64 groups: 4 and 16 channels per half; layer1 and layer3 stay plain ResNeXt units, so one
#: problem holds both families' units). The registered networks only repeat these units, and
#: every one of them runs in eval mode in test_networks, so the repeats are left out here: a Flax V2
#: train step's first call took 14.1 s at 0.5x (16 units), 9.6 s with these 4 (idle machine, 2026-12-02).
TRAIN_MODELS = ("shufflenet_v2_tiny", "shufflenet_v1_g3_tiny", "resnext_sa_tiny")


def train_spec(model: str):
    """The :data:`TRAIN_MODELS` spec named ``model`` (10 classes)."""
    from dataclasses import replace

    from common.spec import resnext, shufflenet_v1, shufflenet_v2
    if model == "shufflenet_v2_tiny":
        config = replace(shufflenet_v2.VARIANTS["shufflenet_v2_x0_5"], stages_repeats=(1, 2, 1))
        return shufflenet_v2.build(model, config, 10)
    if model == "shufflenet_v1_g3_tiny":
        config = replace(shufflenet_v1.VARIANTS["shufflenet_v1_g3_x0_5"], stages_repeats=(1, 2, 1))
        return shufflenet_v1.build(model, config, 10)
    if model == "resnext_sa_tiny":
        config = resnext.ResNeXtConfig((1, 1, 1, 1), groups=4, width_per_group=4, attention_groups=64)
        spec = resnext.build(model, config, 10)
        plain = replace(spec, stages=tuple(replace(stage, blocks=tuple(replace(b, sa=None) for b in stage.blocks))
                                           for stage in spec.stages))
        return replace(spec, stages=(plain.stages[0], spec.stages[1], plain.stages[2], spec.stages[3]))
    raise ValueError(f"unknown training model {model!r}; choose from {TRAIN_MODELS}")


#: Seed of the training problem. Nothing depends on it: float32 gradients are judged with the kink
#: allowance of whatever problem the seed makes (common.check.gradient_criterion), and ``--full`` runs the
#: criterion over 20 seeds of every problem (test_training.test_float32_criterion_holds_for_any_seed).
TRAIN_SEED = 0


def _shards_key(shards: int) -> tuple:
    """The store key's part for ``shards``: none for the one-process problem (its keys predate it)."""
    return () if shards == 1 else (("shards", shards),)


def train_kinks(model: str, freeze: bool = False, seed: int = TRAIN_SEED, shards: int = 1):
    """The float64 kink allowance of a training problem's :data:`TRAIN_STEPS` steps (``torch_impl.kinks``),
    once per run; ``shards``: of the problem with per-process BatchNorm (DDP on CPU)."""
    from common.check.gradient_criterion import Kinks
    from common.check.train_verify import measure_kinks, train_inputs

    def compute() -> dict:
        spec = train_spec(model)
        x, labels = train_inputs(spec, TRAIN_SHAPE, seed=seed)
        kinks = measure_kinks(spec, random_weights(spec, seed=seed, dtype="float64"), x, labels, freeze,
                              train_steps(freeze), *TRAIN_HYPER, shards=shards)
        return store.flatten({"steps": {str(i): dict(a) for i, a in enumerate(kinks.steps)},
                              "input_grad": np.asarray(kinks.input_grad), "elements": np.asarray(kinks.elements)})

    key = ("kinks", model, freeze, seed, TRAIN_SHAPE, train_steps(freeze), *_shards_key(shards))
    found = store.unflatten(store.cached(key, compute))
    steps = tuple({k: float(v) for k, v in found["steps"][str(i)].items()} for i in range(len(found["steps"])))
    return Kinks(steps, float(found["input_grad"]), int(found["elements"]))


def train_outputs(framework: str, model: str, dtype: str, freeze: bool = False, steps: int | None = None,
                  seed: int = TRAIN_SEED, shards: int = 1) -> dict:
    """``train_step_numpy`` (:data:`TRAIN_HYPER`, ``steps`` steps, by default :func:`train_steps`) on shared
    weights / data, run by one party (``"keras"`` = this process's Keras backend), once per run.
    ``shards`` (torch): the one-process reference of that many DDP processes."""
    from common.check.train_verify import run_train_step, train_inputs
    party = _party(framework)
    steps = train_steps(freeze) if steps is None else steps
    key = ("train", party, model, dtype, freeze, seed, TRAIN_SHAPE, steps, *_shards_key(shards))

    def compute() -> dict:
        spec = train_spec(model)
        weights = random_weights(spec, seed=seed, dtype="float64")
        x, labels = train_inputs(spec, TRAIN_SHAPE, seed=seed)
        out = run_train_step(_framework(party), spec, weights, x, labels, dtype, *TRAIN_HYPER, freeze, steps,
                             shards)
        return store.flatten(out)

    return store.unflatten(store.cached(key, compute, _producer(party)))
