"""Weight files written by an earlier release still read, bit for bit, in every format: the files in
``tests/fixtures/files_<rev>/`` were written by that revision (``tests/fixtures/record_files.py``), and
each is read here with today's code and compared with the weights the recorder drew."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from common import get_spec, random_weights
from common.files.convert import read_weights

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("record_files", FIXTURES / "record_files.py")
RECORD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RECORD)
OLD_FILES = sorted(p for d in FIXTURES.glob("files_*") for p in d.iterdir())


def test_there_are_old_files_of_every_format():
    assert {p.name for p in OLD_FILES} >= set(RECORD.FILES)


@pytest.mark.backend_neutral  # reading never builds a model: the same code on every Keras backend
@pytest.mark.parametrize("path", OLD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_old_file_reads_exactly(path):
    expected = random_weights(get_spec(RECORD.MODEL, RECORD.CLASSES), RECORD.SEED, "float32")
    weights, recorded = read_weights(path, model=RECORD.MODEL)
    assert recorded in (None, RECORD.MODEL)  # a .pth / .weights.h5 records no name
    assert list(weights) == list(expected)
    for key, value in expected.items():
        assert weights[key].dtype == value.dtype and np.array_equal(weights[key], value), key
