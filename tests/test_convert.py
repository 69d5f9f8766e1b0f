"""Weight files in every format, every direction, from the API and the CLI; safe, atomic, lossless;
every kind of bad input refused with a clear error and nothing written."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import (GroupnetsError, WeightsFileError, WeightsMismatchError, count_parameters, get_spec, list_models,
                    random_weights)
from common.files.convert import FORMATS, convert, read_weights, write_weights
from common.weights.porting import without_head
from conftest import import_backend

MODEL = "shufflenet_v2_x0_5"  # also a Megvii configuration: the "megvii" format takes part everywhere
EXTENSION = {"canonical": ".safetensors", "torch": ".pth", "keras-weights": ".weights.h5", "keras": ".keras",
             "flax": ".msgpack", "megvii": ".pth.tar"}
GROUPNETS = str(Path(sys.executable).with_name("groupnets"))


def _source(tmp_path: Path, fmt: str, model: str = MODEL, num_classes: int = 1000, seed: int = 0,
            megvii: bool = False) -> tuple[Path, dict]:
    """A file of random weights in ``fmt``; ``megvii`` (or a Megvii file): ``fc.bias`` = 0, as Megvii's
    classifier has none."""
    spec = get_spec(model, num_classes)
    weights = random_weights(spec, seed, "float32", calibrate=False)
    if megvii or fmt == "megvii":
        weights["fc.bias"][:] = 0
    path = tmp_path / f"source{EXTENSION[fmt]}"
    write_weights(path, weights, spec, fmt)
    return path, weights


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


DIRECTIONS = list(itertools.permutations(FORMATS, 2))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=[f"{a}->{b}" for a, b in DIRECTIONS])
def test_every_direction_is_lossless(tmp_path, src, dst):
    source, weights = _source(tmp_path, src, megvii=dst == "megvii")
    out = tmp_path / f"out{EXTENSION[dst]}"
    result = convert(MODEL, source, out, destination_format="megvii" if dst == "megvii" else None)
    assert result.destination_format == dst and result.num_classes == 1000
    assert _same(read_weights(out, model=MODEL)[0], weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, out.name])  # no temp files


@pytest.mark.parametrize("model", list_models())
def test_round_trip_torch_canonical_keras_flax_torch_is_bit_exact(tmp_path, model):
    source, weights = _source(tmp_path, "torch", model)
    chain = [source, tmp_path / "a.safetensors", tmp_path / "b.weights.h5", tmp_path / "c.msgpack", tmp_path / "d.pth"]
    for a, b in zip(chain, chain[1:]):
        convert(model, a, b)
    assert _same(read_weights(chain[-1])[0], weights)


def test_num_classes_is_inferred_and_recorded(tmp_path):
    source, weights = _source(tmp_path, "canonical", num_classes=10)
    result = convert(MODEL, source, tmp_path / "w.keras")
    assert result.num_classes == 10
    assert _same(read_weights(tmp_path / "w.keras")[0], weights)


def test_torch_checkpoint_wrappers_are_understood(tmp_path):
    import torch
    weights = random_weights(get_spec(MODEL), 1, "float32", calibrate=False)
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    for i, wrapped in enumerate([{"state_dict": state}, {"model": state}, {f"module.{k}": v for k, v in state.items()}]):
        path = tmp_path / f"w{i}.pth"
        torch.save(wrapped, path)
        assert _same(read_weights(path)[0], weights)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/groupnets_pwned",))


@pytest.mark.parametrize("name", ["evil.pth", "evil.pth.tar", "evil.bin", "evil.ckpt"])
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_code_is_refused_never_run(tmp_path, name, writer):
    path = tmp_path / name
    payload = {"state_dict": {"conv1.0.weight": _Exploit()}, "epoch": 3}
    if writer == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        import torch
        torch.save(payload, path)
    Path("/tmp/groupnets_pwned").unlink(missing_ok=True)
    with pytest.raises(WeightsFileError, match=re.escape(name)):
        read_weights(path)
    assert not Path("/tmp/groupnets_pwned").exists()


# ------------------------------------------------------------------ checkpoints as users have them
def _torch_file(path: Path, payload: object) -> Path:
    import torch
    torch.save(payload, path)
    return path


def _tensors(weights: dict, prefix: str = "") -> dict:
    import torch
    return {prefix + k: torch.from_numpy(np.array(v)) for k, v in weights.items()}


def _read_container(path: Path, **options) -> tuple[dict, str]:
    from common.files.convert import read_weights_file
    weights, metadata = read_weights_file(path, **options)
    return weights, metadata.get("container", "")


@pytest.mark.parametrize("name", ["ckpt.pth.tar", "ckpt.tar", "pytorch_model.bin", "last.ckpt", "w.pt"])
def test_torch_checkpoint_names_people_use_all_read(tmp_path, name):
    weights = random_weights(get_spec(MODEL), 0, calibrate=False)
    path = _torch_file(tmp_path / name, _tensors(weights))
    if name.endswith(".tar"):  # and in the legacy (pre-1.6, non-zip) torch.save format
        import torch
        torch.save(_tensors(weights), path, _use_new_zipfile_serialization=False)
    result = convert(MODEL, path, tmp_path / "out.safetensors")
    assert result.source_format == "torch" and result.container == "a plain state_dict"
    read, _ = read_weights(tmp_path / "out.safetensors")
    assert all(np.array_equal(read[k], v) for k, v in weights.items())


@pytest.mark.parametrize("wrapper, prefix", [("state_dict", "module."), ("state_dict", "model."),
                                             ("model_state_dict", ""), ("model", "module.")])
def test_training_checkpoints_unwrap_and_report_what_they_ignore(tmp_path, wrapper, prefix):
    import torch
    weights = random_weights(get_spec(MODEL), 0, calibrate=False)
    payload = {"epoch": 90, "arch": MODEL, "best_acc1": torch.tensor(71.2), wrapper: _tensors(weights, prefix),
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    read, container = _read_container(_torch_file(tmp_path / "ckpt.pth.tar", payload))
    assert read.keys() == weights.keys() and all(np.array_equal(read[k], v) for k, v in weights.items())
    assert f"under {wrapper!r}" in container and "epoch, arch, best_acc1, optimizer" in container
    assert (f"prefix {prefix!r} removed" in container) == bool(prefix)


def test_timm_checkpoint_reads_the_plain_weights_unless_asked_for_the_ema(tmp_path):
    spec = get_spec(MODEL)
    plain, ema = (random_weights(spec, seed, calibrate=False) for seed in (0, 1))
    path = _torch_file(tmp_path / "model_best.pth.tar", {"state_dict": _tensors(plain), "state_dict_ema": _tensors(ema),
                                                        "epoch": 3})
    read, container = _read_container(path)
    assert np.array_equal(read["fc.weight"], plain["fc.weight"]) and "state_dict_ema" in container
    read, container = _read_container(path, state_dict_key="state_dict_ema")
    assert np.array_equal(read["fc.weight"], ema["fc.weight"]) and "under 'state_dict_ema'" in container


def test_two_candidate_state_dicts_need_a_choice(tmp_path):
    weights = _tensors(random_weights(get_spec(MODEL), 0, calibrate=False))
    path = _torch_file(tmp_path / "both.pth", {"state_dict": weights, "model": weights})
    with pytest.raises(WeightsFileError, match="both.pth: holds state dicts under 'state_dict', 'model'; choose"):
        read_weights(path)
    with pytest.raises(WeightsFileError, match="no state_dict under 'ema'"):
        read_weights(path, state_dict_key="ema")


@pytest.mark.parametrize("held, named, says", [("canonical", "w.pth", "is a safetensors file, not a torch file"),
                                               ("torch", "w.safetensors", "is a PyTorch checkpoint"),
                                               ("keras-weights", "w.msgpack", "is an HDF5 file"),
                                               ("flax", "w.keras", "is a msgpack file")])
def test_a_misnamed_file_is_told_what_it_holds(tmp_path, held, named, says):
    real, _ = _source(tmp_path, held)
    misnamed = tmp_path / named
    real.rename(misnamed)
    with pytest.raises(WeightsFileError, match=re.escape(f"{misnamed}: {says}")):
        convert(MODEL, misnamed, tmp_path / "out.pth" if held != "torch" else tmp_path / "out.msgpack")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "out.msgpack").exists()


def test_transfer_learning_skips_and_reports_the_head(framework):
    backend = import_backend(framework)
    pretrained = random_weights(get_spec(MODEL), 2, "float32", calibrate=False)
    backbone, removed = without_head(pretrained)
    assert removed == ("fc.weight", "fc.bias")
    model = backend.create_model(MODEL, num_classes=10)
    report = backend.load_weights(model, backbone, strict=False)
    assert report.missing_keys == ("fc.weight", "fc.bias") and report.unexpected_keys == ()


# ------------------------------------------------------------------------------------------ bad input
def _bad(tmp_path, case):
    """(model, source path, destination path, expected message) for one kind of bad input."""
    good, _ = _source(tmp_path, "canonical")
    out = tmp_path / "out.pth"
    if case == "wrong model":
        return "shufflenet_v2_x1_0", good, out, "holds weights for 'shufflenet_v2_x0_5'"
    if case == "bad keys":
        spec = get_spec(MODEL)
        weights = random_weights(spec, 0, calibrate=False)
        del weights["conv1.0.weight"]
        weights["stray.weight"] = np.zeros(1, np.float32)
        weights["fc.bias"] = np.zeros(3, np.float32)
        path = tmp_path / "bad.safetensors"
        from common import save_weights
        save_weights(path, weights, {"model": MODEL})
        return MODEL, path, out, "missing keys (1): conv1.0.weight"
    if case == "wrong dtype":
        weights = random_weights(get_spec(MODEL), 0, calibrate=False)
        weights["fc.weight"] = weights["fc.weight"].astype(np.int32)
        path = tmp_path / "int.safetensors"
        from common import save_weights
        save_weights(path, weights, {"model": MODEL})
        return MODEL, path, out, "expected a floating type"
    if case == "truncated":
        path = tmp_path / "cut.safetensors"
        path.write_bytes(good.read_bytes()[:4096])
        return MODEL, path, out, "cut.safetensors"
    if case == "corrupt torch":
        path = tmp_path / "junk.pth"
        path.write_bytes(b"PK\x03\x04 not really a zip" * 50)
        return MODEL, path, out, "junk.pth"
    if case == "empty":
        path = tmp_path / "empty.msgpack"
        path.write_bytes(b"")
        return MODEL, path, out, "file is empty"
    if case == "directory":
        path = tmp_path / "dir.safetensors"
        path.mkdir()
        return MODEL, path, out, "is a directory"
    if case == "unknown extension":
        return MODEL, good, tmp_path / "out.weights", "unknown extension"
    if case == "missing directory":
        return MODEL, good, tmp_path / "nope" / "out.pth", "does not exist"
    if case == "exists":
        out.write_bytes(b"keep me")
        return MODEL, good, out, "refusing to overwrite"
    raise AssertionError(case)


BAD_CASES = ["wrong model", "bad keys", "wrong dtype", "truncated", "corrupt torch", "empty", "directory",
             "unknown extension", "missing directory", "exists"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, case):
    model, source, destination, message = _bad(tmp_path, case)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(GroupnetsError) as info:
        convert(model, source, destination)
    assert message in str(info.value)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing half-written, nothing overwritten


def test_bad_keys_are_all_listed_at_once(tmp_path):
    model, source, destination, _ = _bad(tmp_path, "bad keys")
    with pytest.raises(WeightsMismatchError) as info:
        convert(model, source, destination)
    assert info.value.missing == ["conv1.0.weight"] and info.value.unexpected == ["stray.weight"]
    assert [k for k, *_ in info.value.wrong_shape] == ["fc.bias"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GROUPNETS, *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_cli_convert_with_verify(tmp_path):
    source, _ = _source(tmp_path, "torch", num_classes=10)
    out = tmp_path / "w.msgpack"
    result = _cli("convert", MODEL, str(source), str(out), "--verify", "--size", "32")
    assert result.returncode == 0, result.stderr
    assert "10 classes" in result.stdout and "all pairs within bounds" in result.stdout
    again = _cli("convert", MODEL, str(source), str(out))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert _cli("convert", MODEL, str(source), str(out), "--force").returncode == 0


def test_cli_verify_reports_nan_weights(tmp_path):
    spec = get_spec(MODEL)
    weights = random_weights(spec, 0, calibrate=False)
    weights["stage3.0.branch1.0.weight"][0, 0, 0, 0] = np.nan
    path = tmp_path / "nan.safetensors"
    from common import save_weights
    save_weights(path, weights, {"model": MODEL})
    result = _cli("convert", MODEL, str(path), str(tmp_path / "out.pth"), "--verify")
    assert result.returncode == 2 and "NaN/Inf" in result.stderr and "stage3.0.branch1.0.weight" in result.stderr


def test_cli_verify_user_weights(tmp_path):
    source, _ = _source(tmp_path, "keras", num_classes=5)
    result = _cli("verify", MODEL, "--weights", str(source), "--size", "32", "--dtype", "float64")
    assert result.returncode == 0, result.stderr
    assert "all pairs within bounds" in result.stdout


# ----------------------------------------------------------------- Keras files, read and written directly
KERAS_FILE_CASES = [("shufflenet_v2_x0_5", "float32"), ("shufflenet_v2_x0_5", "float64"),
                    ("shufflenet_v1_g3_x0_5", "float32"), ("shufflenet_v1_g3_x0_5", "float64"),
                    ("resnext50_32x4d", "float32")]


def _h5_structure(handle) -> dict:
    """Every group and dataset: attributes, and a dataset's shape and dtype."""
    import h5py

    out = {}

    def visit(name, obj):
        attrs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in obj.attrs.items()}
        out[name] = (tuple(obj.shape), obj.dtype.str, attrs) if isinstance(obj, h5py.Dataset) else ("group", attrs)

    handle.visititems(visit)
    return out


def _inner_h5_structure(keras_path: Path) -> dict:
    import io
    import zipfile

    import h5py
    with zipfile.ZipFile(keras_path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h:
        return _h5_structure(h)


@pytest.mark.backend_neutral  # Keras' saving code and file layout are the same Python on every backend
@pytest.mark.parametrize("model,dtype", KERAS_FILE_CASES, ids=[f"{m}-{d}" for m, d in KERAS_FILE_CASES])
def test_keras_files_are_exactly_what_keras_writes_and_reads(tmp_path, model, dtype):
    """Written without building a model, yet: the same HDF5 groups, datasets, dtypes and attributes as
    ``model.save_weights`` / ``model.save`` (same config.json), loadable by Keras itself (``safe_mode=True``);
    and Keras' own files read bit-exactly (``num_classes`` from the file). Loading weights into a model on
    each backend is proven by every network test (``load_weights``) and ``test_export_load_round_trip``."""
    import json
    import zipfile

    import h5py
    import keras

    import keras_impl
    spec = get_spec(model, 10)
    weights = random_weights(spec, 3, dtype, calibrate=False)
    reference = keras_impl.build(spec, dtype)
    keras_impl.load_weights(reference, weights)
    theirs_h5, theirs_keras = tmp_path / "theirs.weights.h5", tmp_path / "theirs.keras"
    reference.save_weights(str(theirs_h5))
    reference.save(str(theirs_keras))
    ours_h5, ours_keras = tmp_path / "ours.weights.h5", tmp_path / "ours.keras"
    write_weights(ours_h5, weights, spec)
    write_weights(ours_keras, weights, spec)

    with h5py.File(theirs_h5, "r") as a, h5py.File(ours_h5, "r") as b:
        assert _h5_structure(b) == _h5_structure(a)
    assert _inner_h5_structure(ours_keras) == _inner_h5_structure(theirs_keras)
    with zipfile.ZipFile(theirs_keras) as a, zipfile.ZipFile(ours_keras) as b:
        assert [i.filename for i in b.infolist()] == [i.filename for i in a.infolist()]
        assert json.loads(b.read("config.json")) == json.loads(a.read("config.json"))
        assert json.loads(b.read("metadata.json")).keys() == json.loads(a.read("metadata.json")).keys()

    fresh = keras_impl.build(spec, dtype)
    fresh.load_weights(str(ours_h5))
    assert _same(keras_impl.export_weights(fresh), weights)
    loaded = keras.saving.load_model(str(ours_keras), compile=False, safe_mode=True)
    assert isinstance(loaded, keras_impl.GroupNet) and loaded.spec == spec
    assert _same(keras_impl.export_weights(loaded), weights)

    assert _same(read_weights(theirs_h5, model=model)[0], weights)  # the registered 1000-class spec: fc from file
    read, recorded = read_weights(theirs_keras)
    assert recorded == model and _same(read, weights)


@pytest.mark.parametrize("model", list_models())
def test_keras_layout_places_every_tensor_once(model):
    from keras_impl.h5_layout import keras_layout
    from common.spec.params import canonical_params
    layout = keras_layout(get_spec(model))
    assert sorted(layout.datasets.values()) == sorted(canonical_params(get_spec(model)))
    groups = [entry.group for entry in layout.layers]
    assert len(groups) == len(set(groups)) and layout.model_name == model


def test_keras_weights_file_of_another_model_lists_every_problem(tmp_path):
    source, _ = _source(tmp_path, "keras-weights", "shufflenet_v1_g3_x0_5")
    with pytest.raises(WeightsFileError) as info:
        convert(MODEL, source, tmp_path / "out.pth")
    message = str(info.value)
    assert str(source) in message and f"does not fit {MODEL!r}" in message
    assert "missing layers/" in message and "expected (" in message
    count = int(re.search(r"\((\d+) problems\)", message).group(1))
    assert count > 12 and message.count("; ") == count - 1  # all of them, not the first few
    assert not (tmp_path / "out.pth").exists()


def test_keras_weights_file_with_missing_extra_and_misshapen_entries(tmp_path):
    import h5py

    from keras_impl.h5_layout import keras_layout
    where = {key: path for path, key in keras_layout(get_spec(MODEL)).datasets.items()}
    first, bias = where["conv1.0.weight"], where["fc.bias"]
    stray = where["stage2.0.branch1.0.weight"].rsplit("/", 1)[0] + "/7"
    source, _ = _source(tmp_path, "keras-weights")
    with h5py.File(source, "a") as handle:
        del handle[first], handle[bias]
        handle[stray] = np.zeros(3, np.float32)
        handle[bias] = np.zeros(7, np.float32)
    with pytest.raises(WeightsFileError) as info:
        read_weights(source, model=MODEL)
    message = str(info.value)
    assert str(source) in message and "(3 problems)" in message
    assert f"missing {first} (conv1.0.weight" in message and f"unexpected {stray} (shape (3,))" in message
    assert f"{bias} (fc.bias): shape (7,), expected (1000,)" in message


@pytest.mark.parametrize("case", ["truncated", "not hdf5", "external link", "keras: other class", "keras: no weights",
                                  "keras: truncated"])
def test_bad_keras_files_are_refused_with_the_file_named(tmp_path, case):
    import json
    import zipfile

    import h5py
    h5, _ = _source(tmp_path, "keras-weights")
    keras_file, _ = _source(tmp_path, "keras")
    if case == "truncated":
        bad = tmp_path / "cut.weights.h5"
        bad.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
        expected = "corrupt or truncated"
    elif case == "not hdf5":
        bad = tmp_path / "text.weights.h5"
        bad.write_bytes(b"hello" * 100)
        expected = "no HDF5 signature"
    elif case == "external link":
        bad = tmp_path / "link.weights.h5"
        bad.write_bytes(h5.read_bytes())
        with h5py.File(bad, "a") as handle:
            handle["layers/extra"] = h5py.ExternalLink(str(h5), "/layers")
        expected = "a link"
    elif case == "keras: other class":
        bad = tmp_path / "seq.keras"
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("config.json", json.dumps({"module": "keras.layers", "class_name": "Lambda",
                                                        "config": {"name": "evil"}, "registered_name": None}))
            archive.writestr("model.weights.h5", h5.read_bytes())
        expected = "not a groupnets model"
    elif case == "keras: no weights":
        bad = tmp_path / "empty.keras"
        with zipfile.ZipFile(keras_file) as src, zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("config.json", src.read("config.json"))
        expected = "has no model.weights.h5"
    else:
        bad = tmp_path / "cut.keras"
        bad.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size // 2])
        expected = "zip archive"
    with pytest.raises(WeightsFileError) as info:
        read_weights(bad, model=MODEL)
    assert str(bad) in str(info.value) and expected in str(info.value)


def test_flax_file_is_exactly_what_flax_serialization_writes(tmp_path):
    """flax_impl streams the msgpack file array by array (memory); the bytes must still be Flax's own."""
    from flax import serialization
    from flax_impl.files import FORMAT_VERSION, nest
    spec = get_spec("shufflenet_v1_g3_x0_5")
    weights = random_weights(spec, 0, "float64")
    path = tmp_path / "w.msgpack"
    write_weights(path, weights, spec)
    framework = import_backend("flax").raw_weights(_flax_model(spec, weights))
    framework = {k: (v.astype(np.int64) if k.endswith("num_batches_tracked") else v) for k, v in framework.items()}
    payload = {"format": FORMAT_VERSION, "metadata": {"model": spec.name, "num_classes": "1000"},
               "state": nest(framework)}
    assert path.read_bytes() == serialization.msgpack_serialize(payload)


def _flax_model(spec, weights):
    flax_impl = import_backend("flax")
    model = flax_impl.build(spec, "float64")
    flax_impl.load_weights(model, weights)
    return model


# ------------------------------------------------------------------------- the model read from the file
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_convert_without_a_model_reads_it_from_the_file(tmp_path, fmt):
    source, weights = _source(tmp_path, fmt, num_classes=10)
    out = tmp_path / ("out.pth" if fmt != "torch" else "out.safetensors")
    result = convert(None, source, out)
    assert (result.model, result.num_classes) == (MODEL, 10)
    assert _same(read_weights(out, model=MODEL)[0], weights)


def test_a_file_for_another_model_is_named_for_what_it_holds(tmp_path):
    source, _ = _source(tmp_path, "torch", model="resnext50_32x4d")
    with pytest.raises(WeightsFileError, match=r"holds resnext50_32x4d weights .*1000 classes.*, not shufflenet_v2_x1_0$"):
        convert("shufflenet_v2_x1_0", source, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_file_that_fits_no_model_or_two_says_so(tmp_path, monkeypatch):
    import common.weights.fingerprint as fingerprint
    weights = random_weights(get_spec(MODEL), 0, calibrate=False)
    odd = tmp_path / "odd.pth"
    _torch_file(odd, _tensors({**weights, "extra.weight": np.ones(3, np.float32)}))
    with pytest.raises(WeightsFileError, match=f"odd.pth: fits no registered model; the closest, {MODEL}, differs in 1"):
        convert(None, odd, tmp_path / "out.safetensors")
    twin = tmp_path / "twin.pth"
    _torch_file(twin, _tensors(weights))
    real_get_spec = fingerprint.get_spec
    monkeypatch.setattr(fingerprint, "list_models", lambda: [MODEL, "twin_of_v2"])
    monkeypatch.setattr(fingerprint, "get_spec", lambda name, c=None: real_get_spec(MODEL if name == "twin_of_v2" else name, c))
    with pytest.raises(WeightsFileError, match=f"fits {MODEL} and twin_of_v2 alike; name the model"):
        convert(None, twin, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_inspect_says_what_a_file_holds(tmp_path):
    import json
    weights = random_weights(get_spec(MODEL, 10), 0, calibrate=False)
    weights["conv1.0.weight"][0, 0, 0, 0] = np.nan
    path = _torch_file(tmp_path / "ckpt.pth.tar", {"state_dict": _tensors(weights, "module."), "epoch": 1})
    out = subprocess.run([GROUPNETS, "inspect", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    report = json.loads(out.stdout)
    assert report["format"] == "torch" and "ignored: epoch" in report["container"] and "'module.'" in report["container"]
    assert [(m["model"], m["num_classes"]) for m in report["matches"]] == [(MODEL, 10)]
    assert report["nonfinite"] == ["conv1.0.weight"] and report["tensors"] == len(weights)
    assert report["parameters"] == count_parameters(get_spec(MODEL, 10))
    text = subprocess.run([GROUPNETS, "inspect", str(path)], capture_output=True, text=True, timeout=300).stdout
    assert text.splitlines()[0] == f"{path}: a PyTorch checkpoint (torch.save zip) (format 'torch')"
    assert f"holds: {MODEL} weights" in text and "NaN/Inf: conv1.0.weight" in text


@pytest.mark.parametrize("name", ["notes.pth.tar", "notes.bin"])
def test_a_zip_that_is_not_a_torch_file_is_a_clear_error(tmp_path, name):
    import zipfile
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not weights")
    with pytest.raises(WeightsFileError, match=f"{name}: not a readable PyTorch weights file"):
        convert(MODEL, path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_truncated_file_of_every_format_is_a_clear_error(tmp_path, fmt):
    good, _ = _source(tmp_path, fmt)
    cut = tmp_path / f"cut{EXTENSION[fmt]}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / ("out.pth" if fmt != "torch" else "out.safetensors")
    with pytest.raises(WeightsFileError, match=re.escape(str(cut))):
        convert(MODEL, cut, out)
    with pytest.raises(WeightsFileError, match=re.escape(str(cut))):
        convert(None, cut, out)
    assert not out.exists()


def test_a_hub_safetensors_file_without_metadata_reads_as_canonical(tmp_path):
    from common import save_weights
    weights = random_weights(get_spec(MODEL), 0, calibrate=False)
    save_weights(tmp_path / "model.safetensors", weights)  # timm / hub files carry torchvision keys, no metadata
    result = convert(None, tmp_path / "model.safetensors", tmp_path / "out.pth")
    assert (result.model, result.num_classes) == (MODEL, 1000)
    assert _same(read_weights(tmp_path / "out.pth")[0], weights)


def _official_sa_net_checkpoint(path: Path, model: str) -> dict:
    """What SA-Net's training script saves (wofmanaf/SA-Net ``main.py``): ``torch.save`` of ``{'epoch',
    'arch', 'state_dict', 'best_prec1', 'optimizer'}``, the state_dict of a ``DataParallel`` model
    (``module.`` keys) and SGD's state with a momentum buffer per parameter. Returns the canonical weights."""
    import torch
    import torch_impl
    spec = get_spec(model)
    net = torch.nn.DataParallel(torch_impl.build(spec, weights=random_weights(spec, 0, "float32", calibrate=False)))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers, as after any step (and decays the weights)
    state = net.state_dict()
    torch.save({"epoch": 100, "arch": model, "state_dict": state, "best_prec1": torch.tensor(77.882),
                "optimizer": optimizer.state_dict()}, path)
    return {k.removeprefix("module."): v.numpy() for k, v in state.items()}


def test_official_sa_net_checkpoint_converts_to_every_format(tmp_path):
    """``groupnets convert sa_resnet50 sa_resnet50.pth.tar out.keras`` (and every other format) takes the
    official file as it is; its keys are the canonical ones, so the conversion is bit-exact; without a
    model name the file is recognised by its tensors."""
    source = tmp_path / "sa_resnet50.pth.tar"
    weights = _official_sa_net_checkpoint(source, "sa_resnet50")
    cli = subprocess.run([GROUPNETS, "convert", "sa_resnet50", str(source), str(tmp_path / "out.keras")],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "epoch, arch, best_prec1, optimizer" in cli.stdout and "'module.'" in cli.stdout
    read, recorded = read_weights(tmp_path / "out.keras")
    assert recorded == "sa_resnet50" and _same(read, weights)
    # the other formats: by name and by fingerprint (every format pair of every model: the round-trip test)
    for model, out in (("sa_resnet50", tmp_path / "out.msgpack"), (None, tmp_path / "out.safetensors")):
        assert convert(model, source, out).model == "sa_resnet50"
        assert _same(read_weights(out, model="sa_resnet50")[0], weights)
