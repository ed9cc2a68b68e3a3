"""Language models that turn gene descriptions into vectors.

A model is named by a spec string:

- ``minilm`` (default) or ``smollm2``: models shipped inside PyPI packages, listed in the manifest;
- a local folder: a sentence-transformers folder (it has ``modules.json``) or any Hugging Face
  causal language model (LLaMA-2 and kin), loaded with ``local_files_only``;
- a ``.gguf`` file: a causal language model in GGUF form, converted once and cached;
- ``random:DIM`` or ``random:DIM:SEED``: Gaussian vectors, one per gene symbol, independent of
  the text. This is the honest baseline every text model is compared with.

Every encoder exposes ``model_id`` (what the model is), ``model_sha`` (the bytes it was loaded
from) and ``key`` (model, pooling and settings), which the caches and atlas provenance use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from screader_db.cache import cache_dir
from screader_db.checksums import sha256_path, tree_files
from screader_db.devices import cuda_available
from screader_db.errors import ModelError
from screader_db.extras import require
from screader_db.fetch import ensure
from screader_db.manifest import get_entry
from screader_db.outputs import atomic_write

DEFAULT_MODEL = "minilm"
PACKAGED_MODELS = ("minilm", "smollm2")
LAST_TOKEN_PROMPT = 'This gene description: "{text}" means in one word:"'
LLM = "running a language model (gene text models, the hybrid's decoder)"
Progress = Callable[[int], None]


class Encoder(Protocol):
    """What every gene-text encoder provides."""

    @property
    def model_id(self) -> str:
        """What the model is (a Hugging Face id, a folder name or ``random:DIM:SEED``)."""
        ...

    @property
    def model_sha(self) -> str:
        """The sha256 of the bytes the model was loaded from."""
        ...

    @property
    def dim(self) -> int:
        """The width of the vectors."""
        ...

    @property
    def key(self) -> str:
        """A hash of the model and its settings: the gene-embedding cache's key."""
        ...

    def settings(self) -> dict[str, Any]:
        """The settings that change the vectors (kind, pooling, layer, ...), as recorded in provenance.

        Returns
        -------
        dict
            JSON-serialisable settings, with at least ``kind``.
        """
        ...

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Vectors of the genes' descriptions.

        Parameters
        ----------
        genes
            Gene symbols.
        texts
            One description per gene.
        progress
            Called with the number of genes done after each batch.

        Returns
        -------
        numpy.ndarray
            Genes × :attr:`dim` float32 vectors.
        """
        ...


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pick_device(device: str | None = None) -> str:
    """The torch device to run a language model on.

    Parameters
    ----------
    device
        A device asked for; returned as it is.

    Returns
    -------
    str
        ``device`` when given, else ``cuda`` when a GPU is there, else ``cpu``.

    Raises
    ------
    MissingExtraError
        When no device is given and torch (the ``llm`` extra) is not installed.
    """
    if device:
        return device
    require("torch", extra="llm", purpose=LLM)
    return "cuda" if cuda_available() else "cpu"


@dataclass
class RandomEncoder:
    """Gaussian vectors seeded by each gene symbol: the same gene always gets the same vector.

    Parameters
    ----------
    dim
        The width of the vectors.
    seed
        Mixed into every gene's seed.
    model_sha
        Recorded as the model's sha256 (there are no model bytes).
    """

    dim: int = 384
    seed: int = 0
    model_sha: str = "none"

    @property
    def model_id(self) -> str:
        """``random:DIM:SEED``."""
        return f"random:{self.dim}:{self.seed}"

    @property
    def key(self) -> str:
        """A hash of :attr:`model_id`."""
        return _key({"model": self.model_id})

    def settings(self) -> dict[str, Any]:
        """Kind, width and seed.

        Returns
        -------
        dict
            ``kind`` (``random``), ``dim`` and ``seed``.
        """
        return {"kind": "random", "dim": self.dim, "seed": self.seed}

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Each gene's vector from its symbol alone (``texts`` are not read); see :meth:`Encoder.encode`.

        Parameters
        ----------
        genes : sequence of str
            Gene symbols; each vector is seeded by ``SEED:SYMBOL``.
        texts : sequence of str
            Not read.
        progress : callable or None
            Called once with the number of genes, at the end.

        Returns
        -------
        numpy.ndarray
            float32, genes × :attr:`dim`: standard normal draws divided by sqrt(:attr:`dim`).
        """
        out = np.empty((len(genes), self.dim), dtype=np.float32)
        for i, gene in enumerate(genes):
            digest = hashlib.sha256(f"{self.seed}:{gene}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            out[i] = rng.standard_normal(self.dim).astype(np.float32) / np.sqrt(self.dim)
        if progress:
            progress(len(genes))
        return out


@dataclass
class SentenceEncoder:
    """A sentence-transformers model read from a local folder (the ``llm`` extra).

    Parameters
    ----------
    path
        The model folder (it has ``modules.json``).
    model_id, model_sha
        What the model is and the sha256 of its files.
    device
        The torch device (default: a GPU when there is one).
    batch_size
        Descriptions per batch.
    """

    path: Path
    model_id: str
    model_sha: str
    device: str | None = None
    batch_size: int = 32
    _model: Any = field(default=None, repr=False)

    def _load(self) -> Any:
        if self._model is None:
            _offline()
            sentence_transformers = require("sentence_transformers", extra="llm", purpose=LLM)
            try:
                self._model = sentence_transformers.SentenceTransformer(str(self.path), device=pick_device(self.device),
                                                                        local_files_only=True)
            except (OSError, ValueError) as err:
                message = f"cannot load the sentence-transformers model at {self.path}: {err}"
                raise ModelError(message) from err
        return self._model

    @property
    def dim(self) -> int:
        """The model's embedding width (loads the model)."""
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def key(self) -> str:
        """A hash of the model's sha256."""
        return _key({"model_sha": self.model_sha, "kind": "sentence"})

    def settings(self) -> dict[str, Any]:
        """Kind, pooling and the model's maximum sequence length.

        Returns
        -------
        dict
            ``kind`` (``sentence-transformers``), ``pooling`` (``model``: the model's own) and
            ``max_seq_length`` from ``sentence_bert_config.json`` (None without that file).
        """
        config = self.path / "sentence_bert_config.json"
        length = json.loads(config.read_text()).get("max_seq_length") if config.is_file() else None
        return {"kind": "sentence-transformers", "pooling": "model", "max_seq_length": length}

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Vectors of the genes' descriptions; see :meth:`Encoder.encode`.

        Parameters
        ----------
        genes : sequence of str
            Gene symbols (not read: the vectors come from ``texts``).
        texts : sequence of str
            One description per gene, encoded longest first in batches of :attr:`batch_size`.
        progress : callable or None
            Called with the number of descriptions done after each batch.

        Returns
        -------
        numpy.ndarray
            float32, genes × :attr:`dim`, not normalised.

        Raises
        ------
        MissingExtraError
            When sentence-transformers or torch (the ``llm`` extra) is not installed.
        ModelError
            When the model cannot be loaded.
        """
        model = self._load()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            vectors = model.encode([texts[i] for i in idx], batch_size=self.batch_size, convert_to_numpy=True,
                                   show_progress_bar=False, normalize_embeddings=False)
            out[idx] = vectors.astype(np.float32)
            if progress:
                progress(len(idx))
        return out


@dataclass
class CausalLMEncoder:
    """Hidden states of a decoder-only language model (LLaMA family), pooled per description (the ``llm`` extra).

    Batches are sorted by length so little padding is computed.

    Parameters
    ----------
    path
        The model folder, or the folder of the ``.gguf`` file.
    model_id, model_sha
        What the model is and the sha256 of its files.
    gguf_file
        The ``.gguf`` file's name in ``path`` (converted once into the cache).
    pooling
        ``mean`` (over the description's tokens) or ``last`` (the final token of a prompt that asks
        for a one-word summary).
    layer
        Index into ``hidden_states`` (``-1`` is the last layer).
    max_length
        Tokens kept per description.
    batch_size
        Descriptions per batch.
    device
        The torch device (default: a GPU when there is one).
    dtype
        torch dtype name (default: bfloat16 on a GPU, float32 on the CPU).
    prompt
        The text around each description, with ``{text}`` where it goes (default per pooling).

    Raises
    ------
    ModelError
        When ``pooling`` is neither ``mean`` nor ``last``.
    """

    path: Path
    model_id: str
    model_sha: str
    gguf_file: str | None = None
    pooling: str = "mean"
    layer: int = -1
    max_length: int = 256
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    prompt: str | None = None
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "last"):
            message = f"pooling must be 'mean' or 'last', got {self.pooling!r}"
            raise ModelError(message)
        if self.prompt is None:
            self.prompt = LAST_TOKEN_PROMPT if self.pooling == "last" else "{text}"

    @property
    def key(self) -> str:
        """A hash of the model's sha256 and :meth:`settings`."""
        return _key({"model_sha": self.model_sha, **self.settings()})

    def settings(self) -> dict[str, Any]:
        """Kind, pooling, layer, maximum length and prompt.

        Returns
        -------
        dict
            ``kind`` (``causal-lm``), ``pooling``, ``layer``, ``max_length`` and ``prompt``.
        """
        return {"kind": "causal-lm", "pooling": self.pooling, "layer": self.layer, "max_length": self.max_length,
                "prompt": self.prompt}

    def load(self) -> tuple[Any, Any]:
        """The model and its tokenizer, loaded once.

        Returns
        -------
        model, tokenizer
            The transformers model in eval mode on its device, and its tokenizer.

        Raises
        ------
        MissingExtraError
            When torch or transformers (the ``llm`` extra) is not installed.
        ModelError
            When the model cannot be read.
        """
        return self._load()

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            _offline()
            torch = require("torch", extra="llm", purpose=LLM)
            transformers = require("transformers", extra="llm", purpose=LLM)
            device = pick_device(self.device)
            source = self._local_folder()
            dtype = getattr(torch, self.dtype) if self.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
                model = transformers.AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True, dtype=dtype)
            except (OSError, ValueError) as err:
                message = f"cannot load the causal language model at {source}: {err}"
                raise ModelError(message) from err
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            model.eval().to(device)
            self._model, self._tokenizer = model, tokenizer
        return self._model, self._tokenizer

    def _local_folder(self) -> Path:
        """The model as a transformers folder; a GGUF file is converted once into the cache."""
        if not self.gguf_file:
            return self.path
        target = cache_dir("models") / f"gguf-{self.model_sha[:16]}"
        if (target / "config.json").is_file():
            return target
        transformers = require("transformers", extra="llm", purpose=LLM)
        require("gguf", extra="llm", purpose=f"reading the .gguf model {self.path / self.gguf_file}")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path), gguf_file=self.gguf_file)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(self.path), gguf_file=self.gguf_file)
        except (OSError, ValueError, ImportError) as err:
            message = f"cannot read the GGUF model {self.path / self.gguf_file}: {err}"
            raise ModelError(message) from err
        from safetensors.torch import save_model

        with atomic_write(target, tag=f".{os.getpid()}", keep_existing=True) as tmp:
            tmp.mkdir(parents=True, exist_ok=True)
            model.config.save_pretrained(str(tmp))
            config = json.loads((tmp / "config.json").read_text())
            config.pop("quantization_config", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            save_model(model, str(tmp / "model.safetensors"))
            tokenizer.save_pretrained(str(tmp))
        return target

    @property
    def dim(self) -> int:
        """The model's hidden size (loads the model)."""
        model, _ = self._load()
        return int(model.config.hidden_size)

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Vectors of the genes' descriptions; see :meth:`Encoder.encode`.

        Parameters
        ----------
        genes : sequence of str
            Gene symbols (not read: the vectors come from ``texts``).
        texts : sequence of str
            One description per gene, put into :attr:`prompt`, cut to :attr:`max_length` tokens and
            encoded longest first in batches of :attr:`batch_size`.
        progress : callable or None
            Called with the number of descriptions done after each batch.

        Returns
        -------
        numpy.ndarray
            float32, genes × the hidden size: layer :attr:`layer`'s hidden states, pooled per :attr:`pooling`.

        Raises
        ------
        MissingExtraError
            When torch or transformers (the ``llm`` extra) is not installed.
        ModelError
            When the model cannot be read.
        """
        model, tokenizer = self._load()
        torch = require("torch", extra="llm", purpose=LLM)
        device = next(model.parameters()).device
        prompts = [str(self.prompt).format(text=t) for t in texts]
        lengths = [len(tokenizer(p, truncation=True, max_length=self.max_length)["input_ids"]) for p in prompts]
        order = np.argsort(lengths, kind="stable")[::-1]
        out = np.empty((len(texts), int(model.config.hidden_size)), dtype=np.float32)
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                  max_length=self.max_length).to(device)
                result = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True)
                hidden = result.hidden_states[self.layer].float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                if self.pooling == "mean":
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                else:
                    last = batch["attention_mask"].sum(1) - 1
                    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                out[idx] = pooled.cpu().numpy()
                if progress:
                    progress(len(idx))
        return out


def _folder_sha(path: Path) -> str:
    """Tree hash of a model folder, remembered per (path, sizes, mtimes) so big models hash once."""
    files = [path] if path.is_file() else tree_files(path)
    stamp = _key({"path": str(path.resolve()), "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]})
    memo = cache_dir("model-hashes") / f"{stamp}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = sha256_path(path)
    memo.write_text(digest)
    return digest


def resolve_encoder(spec: str = DEFAULT_MODEL, *, pooling: str = "mean", layer: int = -1, device: str | None = None,
                    dtype: str | None = None, batch_size: int | None = None, max_length: int = 256) -> Encoder:
    """Turn a model spec into an encoder; nothing is loaded yet.

    Parameters
    ----------
    spec
        ``minilm``, ``smollm2``, ``random:DIM[:SEED]``, a local model folder or a ``.gguf`` file
        (see the module docstring).
    pooling, layer, dtype, max_length
        For causal language models (see :class:`CausalLMEncoder`).
    device
        The torch device (default: a GPU when there is one).
    batch_size
        Descriptions per batch (default: 32 for sentence models, 8 for causal ones).

    Returns
    -------
    Encoder
        A :class:`RandomEncoder`, :class:`SentenceEncoder` or :class:`CausalLMEncoder`.

    Raises
    ------
    ModelError
        When the spec names no model that can be found.
    """
    if spec.startswith("random"):
        parts = spec.split(":")
        try:
            dim = int(parts[1]) if len(parts) > 1 else 384
            seed = int(parts[2]) if len(parts) > 2 else 0
        except ValueError as err:
            message = f"random model spec must look like random:DIM or random:DIM:SEED, got {spec!r}"
            raise ModelError(message) from err
        return RandomEncoder(dim=dim, seed=seed)
    if spec in PACKAGED_MODELS:
        entry = get_entry(spec)
        path = ensure(spec)
        model_id = str(entry.extra.get("model_id", spec))
        if spec == "minilm":
            return SentenceEncoder(path=path, model_id=model_id, model_sha=entry.sha256, device=device,
                                   batch_size=batch_size or 32)
        return CausalLMEncoder(path=path.parent, gguf_file=path.name, model_id=model_id, model_sha=entry.sha256,
                               pooling=pooling, layer=layer, device=device, dtype=dtype, batch_size=batch_size or 8,
                               max_length=max_length)
    path = Path(spec).expanduser()
    if not path.exists():
        message = (
            f"model {spec!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}), a random:DIM spec, "
            "nor an existing local folder or .gguf file"
        )
        raise ModelError(message)
    sha = _folder_sha(path)
    if path.is_file():
        if path.suffix != ".gguf":
            message = f"{path} is a file but not a .gguf model; pass the model's folder instead"
            raise ModelError(message)
        return CausalLMEncoder(path=path.parent, gguf_file=path.name, model_id=path.stem, model_sha=sha,
                               pooling=pooling, layer=layer, device=device, dtype=dtype, batch_size=batch_size or 8,
                               max_length=max_length)
    if (path / "modules.json").is_file():
        return SentenceEncoder(path=path, model_id=path.name, model_sha=sha, device=device, batch_size=batch_size or 32)
    if (path / "config.json").is_file():
        model_id = json.loads((path / "config.json").read_text()).get("_name_or_path") or path.name
        return CausalLMEncoder(path=path, model_id=str(model_id), model_sha=sha, pooling=pooling, layer=layer,
                               device=device, dtype=dtype, batch_size=batch_size or 8, max_length=max_length)
    message = f"{path} has neither modules.json (sentence-transformers) nor config.json (transformers)"
    raise ModelError(message)
