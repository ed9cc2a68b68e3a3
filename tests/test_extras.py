"""Optional extras: a missing one is one error that names it, and the default path needs none of them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from screader_db.errors import MissingExtraError, ScreaderWarning
from screader_db.extras import optional, require

TESTS = Path(__file__).parent
# What the extras install (dask's own module included: anndata imports dask.array whenever it is installed).
EXTRA_MODULES = ("torch", "transformers", "sentence_transformers", "gguf", "accelerate", "dask", "distributed", "umap",
                 "fastapi", "uvicorn", "httpx")


def hide(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_module_is_one_error_naming_its_extra(monkeypatch):
    hide(monkeypatch, "torch")
    with pytest.raises(MissingExtraError) as caught:
        require("torch", extra="llm", purpose="training the adaptor")
    assert str(caught.value) == ("training the adaptor needs the 'llm' extra (torch cannot be imported: import of torch "
                                 "halted; None in sys.modules): pip install 'screader-db[llm]'")
    assert (caught.value.extra, caught.value.module) == ("llm", "torch")
    assert optional("torch") is None
    assert optional("numpy") is np


def _sentence_model(tmp_path):
    from screader_db.encoders import SentenceEncoder

    return SentenceEncoder(path=tmp_path, model_id="m", model_sha="0").dim


def _causal_model(tmp_path):
    from screader_db.encoders import CausalLMEncoder

    return CausalLMEncoder(path=tmp_path, model_id="m", model_sha="0").dim


def _device(tmp_path):
    from screader_db.encoders import pick_device

    return pick_device(None)


def _adaptor(tmp_path):
    from screader_db.hybrid import LearnedModel, method_settings

    return LearnedModel("adaptor", np.zeros((4, 8), np.float32), method_settings("adaptor"), n_classes=2, device="cpu")


def _random_llama(tmp_path):
    from screader_db.synthetic import random_llama

    return random_llama(tmp_path, ["gene"])


def _dask(tmp_path):
    from screader_db.builders.distributed import connect

    with connect("local"):
        pass


def _gpu_search(tmp_path):
    from screader_db.index import TorchFlatSearcher

    return TorchFlatSearcher(None)


def _server(tmp_path):
    import importlib

    sys.modules.pop("screader_db.server", None)
    return importlib.import_module("screader_db.server")


def _payloads(tmp_path):
    import importlib

    sys.modules.pop("screader_db.payloads", None)
    return importlib.import_module("screader_db.payloads")


def _client(tmp_path):
    from screader_db.client import Client

    return Client("http://127.0.0.1:9")


@pytest.mark.parametrize(("use", "hidden", "extra", "purpose"), [
    (_sentence_model, "sentence_transformers", "llm", "running a language model"),
    (_causal_model, "torch", "llm", "running a language model"),
    (_causal_model, "transformers", "llm", "running a language model"),
    (_device, "torch", "llm", "running a language model"),
    (_adaptor, "torch", "llm", "the hybrid and adaptor methods"),
    (_random_llama, "transformers", "llm", "a random LLaMA model"),
    (_dask, "dask.distributed", "dask", "building with --dask"),
    (_gpu_search, "torch", "llm", "exact search on a GPU"),
    (_server, "fastapi", "server", "the HTTP server"),
    (_payloads, "pydantic", "server", "the server's JSON payloads"),
    (_client, "httpx", "client", "the screader-db client"),
    (_client, "pydantic", "client", "the screader-db client"),
])
def test_each_optional_import_names_its_extra(monkeypatch, tmp_path, use, hidden, extra, purpose):
    for module in ("screader_db.server", "screader_db.payloads"):
        if module in sys.modules:
            monkeypatch.setitem(sys.modules, module, sys.modules[module])  # put back after the test
    hide(monkeypatch, hidden)
    with pytest.raises(MissingExtraError, match=rf"^{purpose}.* needs the '{extra}' extra \({hidden} cannot be imported: "
                                                rf".*\): pip install 'screader-db\[{extra}\]'$"):
        use(tmp_path)


def test_serve_without_the_server_extra_is_one_error_line(monkeypatch, tmp_path):
    from screader_db.cli import app

    hide(monkeypatch, "uvicorn")
    result = CliRunner().invoke(app, ["serve", "--atlas", str(tmp_path)])
    assert result.exit_code == 1
    assert "Error: screader-db serve needs the 'server' extra (uvicorn cannot be imported" in result.output
    assert "pip install 'screader-db[server]'" in result.output


def test_without_umap_the_map_is_principal_components_and_a_warning(monkeypatch):
    from screader_db.layout import umap_layout

    hide(monkeypatch, "umap")
    vectors = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    with pytest.warns(ScreaderWarning, match=r"^the reference UMAP needs the 'layout' extra \(umap cannot be imported: .*\): "
                                             r"pip install 'screader-db\[layout\]'; the map shows the first two principal "
                                             r"components instead$"):
        coords = umap_layout(vectors)
    assert coords.shape == (40, 2) and coords.dtype == np.float32


@pytest.mark.parametrize("stored", [np.float32, np.float16])
def test_exact_search_without_torch_finds_the_same_neighbours(monkeypatch, stored):
    from screader_db.index import exact_search

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((500, 16)).astype(stored)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    with_torch = exact_search(queries, vectors, 10, block=128)
    hide(monkeypatch, "torch")
    without = exact_search(queries, vectors, 10, block=128)
    np.testing.assert_array_equal(with_torch[1], without[1])
    np.testing.assert_allclose(with_torch[0], without[0], rtol=1e-5)


# Build an atlas from the small generated reference with the default method, annotate a query, write
# the annotated AnnData; print which extras' modules were imported and the labels.
DEFAULT_PATH = """
import importlib.util, json, sys, tempfile, warnings
from pathlib import Path
hidden, layout, tests = set(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3]

class NotInstalled:  # the hidden packages import and look up as if not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

found = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in hidden else found(name, package)
sys.meta_path.insert(0, NotInstalled())
sys.path.insert(0, tests)
from conftest import make_counts
import screader_db
from screader_db.builders.atlas import BuildSettings

folder = Path(tempfile.mkdtemp())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    screader_db.build_atlas(make_counts(300, seed=0), folder / "atlas", label_key="cell_type",
                            settings=BuildSettings(layout=layout))
    result = screader_db.annotate(make_counts(120, seed=1), folder / "atlas")
    result.to_adata(make_counts(120, seed=1)).write_h5ad(folder / "annotated.h5ad")
imported = sorted({m.split(".")[0] for m in sys.modules if sys.modules[m] is not None} & set(json.loads(sys.argv[4])))
print(json.dumps({"imported": imported, "labels": result.table["label"].tolist(),
                  "method": result.info["method"], "warnings": [str(w.message) for w in caught]}))
"""


def _default_path(hidden: tuple[str, ...], layout: str) -> dict:
    done = subprocess.run([sys.executable, "-c", DEFAULT_PATH, json.dumps(hidden), layout, str(TESTS), json.dumps(EXTRA_MODULES)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_method_imports_no_extra_and_runs_without_them():
    # With everything installed and default settings: torch and the other LLM packages stay unimported
    # (anndata itself imports dask.array when dask is installed; the default map, layout="umap", uses
    # the layout extra).
    installed = _default_path((), "umap")
    assert installed["method"] == "marker"
    assert [m for m in installed["imported"] if m not in ("dask", "umap")] == []
    assert "torch" not in installed["imported"]
    # As the base install: every extra's module missing, default settings (the map falls back to PCA).
    base = _default_path(EXTRA_MODULES, "umap")
    assert base["imported"] == []
    assert base["labels"] == installed["labels"]
    assert [w for w in base["warnings"] if "extra" in w] == [
        "the reference UMAP needs the 'layout' extra (umap cannot be imported: No module named 'umap'): "
        "pip install 'screader-db[layout]'; the map shows the first two principal components instead"]
