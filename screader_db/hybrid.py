"""Learned cell embeddings over gene tokens: the scReader hybrid and a light adaptor.

A cell becomes a short sequence of tokens: its ``n_top`` most expressed atlas genes (by
log-normalised expression, highest first), each token the gene's text vector times the gene's
expression. A trainable projector (a two-layer MLP) maps every token to a working width.

- ``hybrid`` (the scReader model): the projected tokens follow the token embeddings of an
  instruction prompt into a frozen LLaMA-family decoder (``inputs_embeds``); the decoder's last
  hidden state at the final gene token is the cell vector. The projector and a classification
  head are trained on the reference labels, the gradients flowing through the frozen decoder.
- ``adaptor``: the same tokens and projector, no decoder: expression-weighted mean pooling of
  the projected tokens, then a small MLP (SCimilarity-style metric learning, much faster).

Both are trained with class-balanced sampling, AdamW and a cosine-similarity classification
head (``loss="ce"``) or a supervised contrastive loss (``loss="supcon"``), seeded. The decoder is
never stored: the atlas keeps its spec, model id and sha256 and refuses another decoder's bytes.
On CUDA the decoder runs under bfloat16 autocast; on the CPU everything is float32.

Since a token is ``value * e_gene`` and the projector's first layer is linear, that layer is
computed as ``value * (W e_gene) + b``: the gene vectors are multiplied by ``W`` once per step
instead of once per token (the same numbers, far less work). Likewise the prompt, the same for
every cell and blind to the gene tokens under causal attention, is run through the decoder once
and its keys and values are reused for every batch.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from screader_db.cell_embedding import LEARNED_METHODS
from screader_db.encoders import CausalLMEncoder, pick_device, resolve_encoder
from screader_db.errors import ModelError, ModelMismatchError, ScreaderError
from screader_db.extras import require

DEFAULT_DECODER = "smollm2"
DEFAULT_PROMPT = ("Below are the most highly expressed genes of one single cell, in decreasing order of expression. "
                  "They tell which type of cell it is:")
LOSSES = ("ce", "supcon")
# Per method: training and network settings (every one can be overridden through ``params``).
DEFAULTS: dict[str, dict[str, Any]] = {
    "hybrid": {"n_top": 64, "epochs": 3, "train_cells": 2000, "batch_size": 16, "lr": 5e-4, "weight_decay": 0.01,
               "hidden": 512, "loss": "ce", "scale": 16.0, "temperature": 0.1, "embed_batch": 32},
    "adaptor": {"n_top": 64, "epochs": 20, "train_cells": 10_000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.01,
                "hidden": 256, "out_dim": 128, "loss": "ce", "scale": 16.0, "temperature": 0.1, "embed_batch": 2048},
}
Progress = Callable[[int], None]
LEARNED = "the hybrid and adaptor methods"


def method_settings(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A learned method's settings: its defaults updated with ``params``.

    Parameters
    ----------
    method
        ``hybrid`` or ``adaptor``.
    params
        Settings to override (None values are ignored; unknown keys are kept as they are).

    Returns
    -------
    dict
        Every setting of :data:`DEFAULTS` for the method (and ``decoder`` and ``prompt`` for hybrid).

    Raises
    ------
    ScreaderError
        When the method is not learned, the loss is unknown or a count is below 1.
    """
    if method not in LEARNED_METHODS:
        message = f"{method!r} is not a learned method; choose one of {', '.join(LEARNED_METHODS)}"
        raise ScreaderError(message)
    settings = {**DEFAULTS[method], **{k: v for k, v in (params or {}).items() if v is not None}}
    if settings["loss"] not in LOSSES:
        message = f"loss must be one of {', '.join(LOSSES)}, got {settings['loss']!r}"
        raise ScreaderError(message)
    for name in ("n_top", "epochs", "train_cells", "batch_size"):
        if int(settings[name]) < 1:
            message = f"{name} must be at least 1, got {settings[name]}"
            raise ScreaderError(message)
    if method == "hybrid":
        settings.setdefault("decoder", DEFAULT_DECODER)
        settings.setdefault("prompt", DEFAULT_PROMPT)
    return settings


def training_cells(n_cells: int, settings: dict[str, Any]) -> int:
    """How many cells one epoch draws (the progress total is this times the epochs).

    Parameters
    ----------
    n_cells
        Cells available for training.
    settings
        The method's settings (``train_cells``).

    Returns
    -------
    int
    """
    return min(n_cells, int(settings["train_cells"]))


# --------------------------------------------------------------------------------------------
# tokens


def gene_tokens(X: sp.spmatrix | np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's gene tokens: its ``n_top`` highest-expressed genes, highest first.

    Parameters
    ----------
    X
        Cells × atlas genes, log-normalised.
    n_top
        Tokens per cell.

    Returns
    -------
    index, values
        Cells × ``n_top`` column indices (int64) and their expression values (float32). Ties keep
        column order; a cell with fewer expressed genes is padded at the end with value 0, index 0.
    """
    dense = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)  # type: ignore[union-attr]
    t = min(n_top, dense.shape[1])
    order = np.argsort(-dense, axis=1, kind="stable")[:, :t]
    values = np.take_along_axis(dense, order, axis=1)
    values = np.where(values > 0, values, 0.0).astype(np.float32)
    index = np.where(values > 0, order, 0).astype(np.int64)
    if t < n_top:
        index = np.pad(index, ((0, 0), (0, n_top - t)))
        values = np.pad(values, ((0, 0), (0, n_top - t)))
    return index, values


def prepare_gene_vectors(vectors: np.ndarray) -> np.ndarray:
    """The token basis: gene text vectors centred across genes and scaled to unit length.

    Parameters
    ----------
    vectors
        Genes × dim text vectors.

    Returns
    -------
    numpy.ndarray
        float32, the same shape.
    """
    centred = np.asarray(vectors, dtype=np.float64)
    centred = centred - centred.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (centred / norms).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the decoder


@dataclass
class Decoder:
    """A frozen causal language model's decoder stack with its tokenizer and provenance.

    Parameters
    ----------
    spec
        The decoder as asked for (``smollm2``, a folder, a ``.gguf`` file).
    model_id, model_sha
        What the model is and the sha256 of its files.
    model
        The decoder stack (frozen, eval mode).
    tokenizer
        Its tokenizer.
    device
        The torch device it is on.
    """

    spec: str
    model_id: str
    model_sha: str
    model: Any
    tokenizer: Any
    device: str

    @property
    def hidden_size(self) -> int:
        """The width of the decoder's hidden states."""
        return int(self.model.config.hidden_size)


def resolve_decoder(spec: str, *, device: str | None = None) -> Any:
    """The encoder behind a decoder spec; nothing is loaded, its ``model_sha`` is known.

    Parameters
    ----------
    spec
        ``smollm2``, a causal language model's folder or a ``.gguf`` file.
    device
        The torch device.

    Returns
    -------
    CausalLMEncoder

    Raises
    ------
    ModelError
        When the spec is not a causal language model.
    """
    encoder = resolve_encoder(spec, device=device)
    if not isinstance(encoder, CausalLMEncoder):
        message = (f"the hybrid method needs a causal language model as --decoder (smollm2, a LLaMA-family folder "
                   f"or a .gguf file), got {spec!r} ({type(encoder).__name__})")
        raise ModelError(message)
    return encoder


def load_decoder(spec: str, *, device: str | None = None, expected_sha: str | None = None) -> Decoder:
    """Load a decoder frozen, in eval mode (bfloat16 weights on CUDA).

    Parameters
    ----------
    spec
        ``smollm2``, a causal language model's folder or a ``.gguf`` file.
    device
        The torch device (default: a GPU when there is one).
    expected_sha
        Refuse a model whose files have another sha256.

    Returns
    -------
    Decoder

    Raises
    ------
    ModelMismatchError
        When the sha256 differs from ``expected_sha``.
    MissingExtraError
        When the ``llm`` extra is not installed.
    """
    device = pick_device(device)
    encoder = resolve_decoder(spec, device=device)
    if expected_sha is not None:
        check_sha(spec, expected_sha, encoder.model_sha)
    model, tokenizer = encoder.load()
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    base.eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    return Decoder(spec=spec, model_id=encoder.model_id, model_sha=encoder.model_sha, model=base, tokenizer=tokenizer,
                   device=device)


def check_sha(spec: str, expected: str, found: str) -> None:
    """Refuse a decoder whose files' sha256 is not the one the embedder was trained on.

    Parameters
    ----------
    spec
        The decoder spec, for the message.
    expected, found
        The recorded and the present sha256.

    Raises
    ------
    ModelMismatchError
        When they differ.
    """
    if found != expected:
        message = (f"the atlas's hybrid embedder was trained on decoder {spec!r} with sha256 {expected[:16]}…, "
                   f"but the decoder found now has sha256 {found[:16]}…; restore the original model files or "
                   "rebuild the atlas with this decoder")
        raise ModelMismatchError(message)


def check_decoder(params: dict[str, Any]) -> None:
    """Refuse an embedder whose decoder's bytes changed since it was trained.

    Parameters
    ----------
    params
        The embedder's stored settings (``decoder``, ``decoder_sha``); nothing is checked without a decoder.

    Raises
    ------
    ModelMismatchError
        When the decoder cannot be found or its sha256 differs.
    """
    spec = params.get("decoder")
    if not spec:
        return
    try:
        encoder = resolve_decoder(str(spec), device="cpu")
    except ModelError as err:
        message = f"the atlas's hybrid embedder needs its decoder {spec!r}, which cannot be found here: {err}"
        raise ModelMismatchError(message) from err
    check_sha(str(spec), str(params.get("decoder_sha", "")), encoder.model_sha)


# --------------------------------------------------------------------------------------------
# the networks (torch is imported only when one is built; LearnedModel, the only way in, says which extra it needs)


def _modules() -> dict[str, Any]:
    """The torch module classes, defined on first use so importing this module stays light."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Projector(nn.Module):
        """Two-layer MLP over tokens ``value * e_gene``; the first layer is applied to the genes once."""

        def __init__(self, gene_dim: int, hidden: int, out: int, scale: float = 1.0) -> None:
            super().__init__()
            self.first = nn.Linear(gene_dim, hidden)
            self.second = nn.Linear(hidden, out)
            self.scale = scale

        def forward(self, genes: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            per_gene = genes @ self.first.weight.T
            hidden = value.unsqueeze(-1) * per_gene[index] + self.first.bias
            return self.second(functional.gelu(hidden)) * self.scale

    class AdaptorNet(nn.Module):
        def __init__(self, gene_dim: int, hidden: int, out: int) -> None:
            super().__init__()
            self.projector = Projector(gene_dim, hidden, hidden)
            self.neck = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))

        def forward(self, genes: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            tokens = self.projector(genes, index, value)
            weights = value / value.sum(dim=1, keepdim=True).clamp_min(1e-6)
            return self.neck((tokens * weights.unsqueeze(-1)).sum(dim=1))

    class HybridNet(nn.Module):
        def __init__(self, gene_dim: int, hidden: int, decoder: Decoder, prompt_ids: list[int], scale: float) -> None:
            super().__init__()
            self.projector = Projector(gene_dim, hidden, decoder.hidden_size, scale)
            # A plain attribute, not a submodule: the decoder is frozen and never part of the state.
            self.__dict__["decoder"] = decoder
            self.prompt_ids = prompt_ids
            self.prompt_kv: dict[bool, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def _prompt(self, model: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
            """Keys and values of the prompt, computed once: it is the same for every cell and,
            the attention being causal, never sees the gene tokens."""
            mode = torch.is_inference_mode_enabled()
            if mode not in self.prompt_kv:
                with torch.no_grad():
                    ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
                    out = model(input_ids=ids, use_cache=True)
                self.prompt_kv[mode] = cache_tensors(getattr(out, "cache", None) or out.past_key_values)
            return self.prompt_kv[mode]

        def forward(self, genes: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            model = self.__dict__["decoder"].model
            n = index.shape[0]
            tokens = self.projector(genes, index, value)
            valid = value > 0
            mask = torch.cat([torch.ones(n, len(self.prompt_ids), dtype=torch.long, device=index.device),
                              valid.long()], dim=1)
            past = {cache_argument(model): new_cache(self._prompt(model, index.device), n)}
            hidden = model(inputs_embeds=tokens, attention_mask=mask, use_cache=True, **past).last_hidden_state
            last = (valid.sum(dim=1) - 1).clamp_min(0)
            return hidden[torch.arange(n, device=index.device), last].float()

    class CosineHead(nn.Module):
        def __init__(self, dim: int, n_classes: int, scale: float) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
            self.scale = scale

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.scale * functional.normalize(z, dim=1) @ functional.normalize(self.weight, dim=1).T

    return {"AdaptorNet": AdaptorNet, "HybridNet": HybridNet, "CosineHead": CosineHead}


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """The (keys, values) of each layer of a transformers cache, across the library's cache APIs.

    Parameters
    ----------
    cache
        A transformers cache.

    Returns
    -------
    list of (keys, values)
    """
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache.to_legacy_cache()]


def cache_argument(model: Any) -> str:
    """The forward argument that takes a cache.

    Parameters
    ----------
    model
        A transformers model.

    Returns
    -------
    str
        ``cache`` (transformers 5) or ``past_key_values``.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def new_cache(pairs: list[tuple[Any, Any]], n: int) -> Any:
    """A fresh cache holding ``pairs`` for a batch of ``n`` (the forward pass appends to it).

    Parameters
    ----------
    pairs
        Per layer (keys, values) of one sequence (the prompt).
    n
        The batch size.

    Returns
    -------
    transformers.DynamicCache
    """
    cache = require("transformers", extra="llm", purpose=LEARNED).DynamicCache
    expanded = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in pairs]
    if hasattr(cache, "from_legacy_cache"):
        return cache.from_legacy_cache(tuple(expanded))
    return cache(ddp_cache_data=expanded)


def supcon_loss(z: Any, codes: Any, temperature: float) -> Any:
    """Supervised contrastive loss (Khosla et al. 2020) of a batch of vectors with class codes.

    Parameters
    ----------
    z
        Batch × dim torch vectors.
    codes
        Their class codes (torch int64).
    temperature
        The softmax temperature.

    Returns
    -------
    torch.Tensor
        The mean loss over cells that have a positive in the batch (0 when none has).
    """
    import torch
    from torch.nn import functional

    unit = functional.normalize(z, dim=1)
    logits = unit @ unit.T / temperature
    eye = torch.eye(len(codes), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, -1e9)
    positive = (codes[:, None] == codes[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positive.sum(dim=1)
    keep = counts > 0
    if not keep.any():
        return z.sum() * 0.0
    per_cell = (log_prob * positive).sum(dim=1)[keep] / counts[keep]
    return -per_cell.mean()


class LearnedModel:
    """A trained (or loaded) network ready to embed cells: gene vectors, weights, settings.

    Parameters
    ----------
    method
        ``hybrid`` or ``adaptor``.
    gene_vectors
        Genes × dim token basis (:func:`prepare_gene_vectors`).
    settings
        The method's settings (:func:`method_settings`); ``dim`` (and for hybrid ``prompt_ids``
        and ``token_scale``) are added.
    n_classes
        Labels the classification head scores.
    device
        The torch device (default: the decoder's, else a GPU when there is one).
    decoder
        The frozen decoder (hybrid only).

    Raises
    ------
    MissingExtraError
        When torch (the ``llm`` extra) is not installed.
    """

    def __init__(self, method: str, gene_vectors: np.ndarray, settings: dict[str, Any], *, n_classes: int,
                 device: str | None = None, decoder: Decoder | None = None) -> None:
        torch = require("torch", extra="llm", purpose=LEARNED)
        self.method = method
        self.settings = settings
        self.device = decoder.device if decoder is not None else pick_device(device)
        self.decoder = decoder
        self.genes = torch.as_tensor(gene_vectors, dtype=torch.float32, device=self.device)
        modules = _modules()
        gene_dim = int(gene_vectors.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(settings.get("seed", 0)))
            if method == "hybrid":
                if decoder is None:
                    raise ScreaderError("the hybrid method needs its decoder")
                if "prompt_ids" not in settings:
                    settings["prompt_ids"] = [int(i) for i in decoder.tokenizer(settings["prompt"])["input_ids"]]
                if "token_scale" not in settings:
                    table = decoder.model.get_input_embeddings().weight
                    settings["token_scale"] = float(table.float().pow(2).mean().sqrt())
                self.net = modules["HybridNet"](gene_dim, int(settings["hidden"]), decoder, settings["prompt_ids"],
                                                float(settings["token_scale"]))
                settings["dim"] = decoder.hidden_size
            else:
                self.net = modules["AdaptorNet"](gene_dim, int(settings["hidden"]), int(settings["out_dim"]))
                settings["dim"] = int(settings["out_dim"])
            self.head = modules["CosineHead"](int(settings["dim"]), n_classes, float(settings["scale"]))
        self.net.to(self.device)
        self.head.to(self.device)

    def _autocast(self) -> Any:
        import torch

        if self.method == "hybrid" and str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, index: np.ndarray, value: np.ndarray) -> Any:
        """The network's float32 output (not normalised) for cells given as gene tokens (:func:`gene_tokens`).

        Runs under bfloat16 autocast for hybrid on a GPU; gradients are kept (wrap it in
        ``torch.inference_mode`` to embed).

        Parameters
        ----------
        index : numpy.ndarray
            int64 cells × ``n_top`` gene column indices.
        value : numpy.ndarray
            float32 cells × ``n_top`` expression values of those genes.

        Returns
        -------
        torch.Tensor
            float32 cells × ``settings['dim']``, on the model's device.
        """
        import torch

        idx = torch.as_tensor(index, device=self.device)
        val = torch.as_tensor(value, device=self.device)
        with self._autocast():
            return self.net(self.genes, idx, val).float()

    def fit(self, X: sp.spmatrix, codes: np.ndarray, *, progress: Progress | None = None) -> dict[str, Any]:
        """Train the projector (and the adaptor's MLP) and the head on labelled cells.

        Parameters
        ----------
        X
            Cells × atlas genes, log-normalised.
        codes
            Each cell's label code (0 to n_classes - 1).
        progress
            Called with the cells trained on after each batch.

        Returns
        -------
        dict
            ``train_loss`` (per epoch), ``train_seconds`` and ``train_steps``.
        """
        import torch
        from torch.nn import functional

        s = self.settings
        rng = np.random.default_rng(int(s.get("seed", 0)))
        index, value = gene_tokens(X, int(s["n_top"]))
        counts = np.bincount(codes)
        chance = 1.0 / counts[codes]
        chance /= chance.sum()
        per_epoch = training_cells(len(codes), s)
        batch = int(s["batch_size"])
        steps = int(s["epochs"]) * math.ceil(per_epoch / batch)
        parameters = [p for p in [*self.net.parameters(), *self.head.parameters()] if p.requires_grad]
        optimiser = torch.optim.AdamW(parameters, lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
        code_tensor = torch.as_tensor(codes, device=self.device)
        losses: list[float] = []
        start = time.perf_counter()
        self.net.train()
        self.head.train()
        for _ in range(int(s["epochs"])):
            drawn = rng.choice(len(codes), size=per_epoch, replace=True, p=chance)
            total = 0.0
            for first in range(0, per_epoch, batch):
                rows = drawn[first : first + batch]
                z = self.forward(index[rows], value[rows])
                target = code_tensor[torch.as_tensor(rows, device=self.device)]
                if s["loss"] == "supcon":
                    loss = supcon_loss(z, target, float(s["temperature"]))
                else:
                    loss = functional.cross_entropy(self.head(z), target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(rows)
                if progress:
                    progress(len(rows))
            losses.append(total / per_epoch)
        self.net.eval()
        self.head.eval()
        return {"train_loss": [round(v, 5) for v in losses], "train_seconds": round(time.perf_counter() - start, 2),
                "train_steps": steps}

    def embed(self, X: sp.spmatrix | np.ndarray, *, batch: int | None = None) -> np.ndarray:
        """Unit-length cell vectors.

        Parameters
        ----------
        X
            Cells × atlas genes, log-normalised.
        batch
            Cells per forward pass (default: the method's ``embed_batch``, 8 times that on a GPU).

        Returns
        -------
        numpy.ndarray
            Cells × dim float32.
        """
        import torch
        from torch.nn import functional

        size = batch or int(self.settings["embed_batch"]) * (8 if str(self.device).startswith("cuda") else 1)
        out = np.empty((X.shape[0], int(self.settings["dim"])), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, X.shape[0], size):
                index, value = gene_tokens(X[start : start + size], int(self.settings["n_top"]))
                z = functional.normalize(self.forward(index, value), dim=1)
                out[start : start + size] = z.cpu().numpy()
        return out

    def state(self) -> dict[str, np.ndarray]:
        """The trained weights as float32 arrays.

        Returns
        -------
        dict of str to numpy.ndarray
            ``net.*`` and ``head.*`` parameters; never the decoder's.
        """
        found = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        found.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) for k, v in found.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back weights from :meth:`state`.

        Parameters
        ----------
        state
            ``net.*`` and ``head.*`` arrays.

        Raises
        ------
        ScreaderError
            When they do not fit the network.
        """
        import torch

        for prefix, module in (("net.", self.net), ("head.", self.head)):
            weights = {k[len(prefix):]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(weights)
            except RuntimeError as err:
                message = f"the stored {self.method} weights do not fit the network: {err}; rebuild the atlas"
                raise ScreaderError(message) from err
        self.net.eval()
        self.head.eval()


def train(method: str, X: sp.spmatrix, labels: np.ndarray, gene_vectors: np.ndarray, *, params: dict[str, Any] | None = None,
          device: str | None = None, progress: Progress | None = None) -> tuple[LearnedModel, dict[str, Any]]:
    """Train a learned method on labelled reference cells.

    Parameters
    ----------
    method
        ``hybrid`` or ``adaptor``.
    X
        Cells × atlas genes, log-normalised.
    labels
        One label per cell (at least 2 distinct).
    gene_vectors
        Genes × dim gene text vectors.
    params
        Settings to override (:func:`method_settings`).
    device
        The torch device (default: a GPU when there is one).
    progress
        Called with the cells trained on after each batch.

    Returns
    -------
    model : LearnedModel
    settings : dict
        What to store: the settings, decoder provenance, classes and the training record.

    Raises
    ------
    ScreaderError
        When there are fewer than 2 labels or a setting is invalid.
    MissingExtraError
        When the ``llm`` extra is not installed.
    """
    settings = method_settings(method, params)
    names = sorted(set(np.asarray(labels).astype(str).tolist()))
    if len(names) < 2:
        message = f"the {method} method learns from labels and needs at least 2 reference labels, found {len(names)}"
        raise ScreaderError(message)
    code = {name: i for i, name in enumerate(names)}
    codes = np.array([code[v] for v in np.asarray(labels).astype(str)], dtype=np.int64)
    vectors = prepare_gene_vectors(gene_vectors)
    decoder = None
    if method == "hybrid":
        decoder = load_decoder(str(settings["decoder"]), device=device)
        settings.update(decoder_id=decoder.model_id, decoder_sha=decoder.model_sha)
    model = LearnedModel(method, vectors, settings, n_classes=len(names), device=device, decoder=decoder)
    record = model.fit(sp.csr_matrix(X), codes, progress=progress)
    settings.update(record, classes=names, train_cells=training_cells(len(codes), settings))
    return model, settings


def restore(method: str, gene_vectors: np.ndarray, state: dict[str, np.ndarray], settings: dict[str, Any], *,
            device: str | None = None) -> LearnedModel:
    """A stored model back from its weights (the decoder is loaded and its sha256 checked).

    Parameters
    ----------
    method
        ``hybrid`` or ``adaptor``.
    gene_vectors
        The stored token basis.
    state
        The stored weights (:meth:`LearnedModel.state`).
    settings
        The stored settings (with ``classes``, and ``decoder`` and ``decoder_sha`` for hybrid).
    device
        The torch device.

    Returns
    -------
    LearnedModel

    Raises
    ------
    ModelMismatchError
        When the decoder's files changed since training.
    MissingExtraError
        When the ``llm`` extra is not installed.
    """
    decoder = None
    if method == "hybrid":
        decoder = load_decoder(str(settings["decoder"]), device=device, expected_sha=str(settings.get("decoder_sha", "")))
    model = LearnedModel(method, gene_vectors, dict(settings), n_classes=len(settings["classes"]), device=device,
                         decoder=decoder)
    model.load_state(state)
    return model
