"""Test outputs computed once per test run and shared by every xdist worker and every pytest invocation.

``.ci/test`` points ``GROUPNETS_TEST_STORE`` at a fresh directory for one run of the whole suite (the
TensorFlow run, then the Keras re-runs on JAX and torch) and deletes it afterwards, so nothing outlives the
code that computed it. Each entry is computed by whichever test first needs it, under an exclusive file
lock: another worker that needs the same entry waits for it instead of computing it again. Without the
variable (a plain ``pytest`` run) entries are memoised in-process only, and an entry that only another
process can compute (another Keras backend's outputs) is a test failure, never a silent skip.

An entry is a flat mapping of names to arrays; :func:`flatten` / :func:`unflatten` carry nested dicts
(the training results' ``grads`` and ``after``) through it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

ENV = "GROUPNETS_TEST_STORE"
#: Where this pytest run writes its logs (below); by default the store itself. ``.ci/test`` gives each of its
#: runs its own directory, since two of them run side by side.
LOG_ENV = "GROUPNETS_RUN_LOGS"
#: A file ``producing-<party>`` in the store: another pytest run, side by side with this one, is computing
#: that party's entries (``.ci/test`` runs the Keras re-runs on JAX and torch at once). A test that needs
#: such an entry waits until it is written, instead of failing for an entry this process cannot compute;
#: once the marker is gone (that run ended) a missing entry fails as before.
PRODUCING = "producing-{}"
POLL_SECONDS = 0.5
#: Where a worker notes each wait for an entry another worker was computing (``.ci/test`` sums it): idle
#: CPU that a better test order would recover.
WAIT_LOG = "waits.tsv"
WAIT_WORTH_LOGGING = 0.05
#: One line per computed entry: process CPU seconds, wall seconds, entry name — where the suite's time
#: goes, per party and model (``.ci/test`` sums it per kind and party).
COMPUTE_LOG = "computes.tsv"
_SEP = "/"
#: Without a store: the in-process memo, most recent last, bounded so a worker's memory stays flat.
_memo: dict[str, dict[str, np.ndarray]] = {}
MEMO_ENTRIES = 64


def directory() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def log_file(name: str) -> Path | None:
    """This run's log ``name`` (:data:`LOG_ENV`, else the store), or None without a store."""
    root = directory()
    if root is None:
        return None
    logs = Path(os.environ.get(LOG_ENV) or root)
    logs.mkdir(parents=True, exist_ok=True)
    return logs / name


def _log(name: str, line: str) -> None:
    path = log_file(name)
    if path is not None:
        with open(path, "a") as log:
            log.write(line)


def _name(key: tuple) -> str:
    readable = "-".join(str(part) for part in key)[:120].replace("/", "_").replace(" ", "")
    return f"{readable}-{hashlib.sha1(repr(key).encode()).hexdigest()[:12]}"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}{_SEP}"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(_SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        keys = [str(k) for k in data["__order__"]]
        return {k: data[k] for k in keys}


def _write(path: Path, entry: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, __order__=np.array(list(entry), dtype=str), **entry)
    os.replace(tmp, path)  # readers never see a half-written entry


def _await_producer(path: Path, root: Path, producer: str) -> None:
    """Wait while a side-by-side run (:data:`PRODUCING`) has yet to write ``path``."""
    marker, asked = root / PRODUCING.format(producer), time.perf_counter()
    while not path.exists() and marker.exists():
        time.sleep(POLL_SECONDS)
    waited = time.perf_counter() - asked
    if waited > WAIT_WORTH_LOGGING:
        _log(WAIT_LOG, f"{waited:.2f}\t{path.stem}\t(from the {producer} run)\n")


def cached(key: tuple, compute: Callable[[], Mapping[str, np.ndarray]], producer: str | None = None
           ) -> dict[str, np.ndarray]:
    """``compute()`` once per run for ``key`` (any tuple of plain values), shared through the store.

    ``producer``: the party whose entry this is when another process computes it (a Keras backend other
    than this process's): waited for while that run is :data:`PRODUCING` it."""
    name, root = _name(key), directory()
    if root is None:
        if name not in _memo:
            _memo[name] = {k: np.asarray(v) for k, v in compute().items()}
            while len(_memo) > MEMO_ENTRIES:
                del _memo[next(iter(_memo))]
        _memo[name] = _memo.pop(name)  # most recently used last
        return _memo[name]
    path = root / f"{name}.npz"
    if producer is not None:
        _await_producer(path, root, producer)
    with open(root / f"{name}.lock", "w") as lock:
        asked = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on an exception
        waited = time.perf_counter() - asked
        if not path.exists():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            _write(path, {k: np.asarray(v) for k, v in compute().items()})
            _log(COMPUTE_LOG, f"{time.process_time() - cpu0:.2f}\t{time.perf_counter() - wall0:.2f}\t{name}\n")
        elif waited > WAIT_WORTH_LOGGING:  # another worker was computing it: this one sat idle
            _log(WAIT_LOG, f"{waited:.2f}\t{name}\n")
    return _read(path)  # reading a few MB back costs milliseconds; no second copy is kept in memory


def clear_memo() -> None:
    """Drop the in-process copies (a store on disk stays)."""
    _memo.clear()
