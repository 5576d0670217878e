"""A library leaves its caller's process as it found it: importing any module changes no global state, and
building a model restores the random generators and the mixed-precision policy it touched."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np

from retrieval.embedding.backbones import build_keras_model, import_tensorflow, spec_for

IMPORT_EVERYTHING = """
import random, warnings
import faiss, numpy as np, rich.console, typer, yaml  # third parties first: rich.console draws a random number
from PIL import Image

def state():
    return (repr(warnings.filters), Image._initialized, len(Image.OPEN), random.getstate(),
            np.random.get_state()[1].tolist())

before = state()
import retrieval, retrieval.cli, retrieval.ingestion.job, retrieval.search.searcher, retrieval.maintenance.verify
import retrieval.analysis.bench, retrieval.analysis.synthetic, retrieval.search.collage
import retrieval.embedding.openvino_engine, retrieval.embedding.preparation, retrieval.embedding.tensorflow_engine
print(before == state())
"""


def test_importing_every_module_changes_no_global_state():
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True"]


def test_building_a_model_restores_random_state_and_precision_policy():
    _, keras = import_tensorflow()
    random.seed(123)
    np.random.seed(456)
    expected = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(456)
    build_keras_model(spec_for("resnet50"), "none", seed=7, precision="bf16")
    assert (random.random(), np.random.random()) == expected
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_command_line_starts_without_numpy_pillow_faiss_or_tensorflow():
    """What makes `retrieval query --server` and `--help` quick: the library is imported per command."""
    script = (
        "import sys, retrieval.cli\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'faiss', 'tensorflow') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_every_public_name_is_the_object_its_home_module_defines():
    import importlib

    import retrieval

    for name in retrieval.__all__:
        value = getattr(retrieval, name)
        assert getattr(importlib.import_module(value.__module__), name) is value, name
    assert callable(retrieval.ingest) and callable(retrieval.verify)
