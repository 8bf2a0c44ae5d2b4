"""The real DiffusionGemma architecture with random weights, for timing it without the checkpoint.

`infill-lsp bench --random-weights infill_lsp/configs/diffusiongemma-26B-A4B-it.json` runs the
engine's own request path (canvas, clamping, token healing, the denoising loop, validation and
ranking) on a model built from the published config, so the latency of the real shape can be
measured on a GPU that has no copy of the 50 GB checkpoint.

- The model is built on the meta device (no memory), then each *unique* parameter is allocated
  once on the target device and filled (normal(0, initializer_range) for matrices, ones for norm
  weights and router scales) from a seeded generator. Every module that shares a parameter gets
  the same tensor, so the encoder stays tied to the decoder and the vocabulary head to the
  embedding: a plain `to_empty()` would untie them and need twice the memory (47 GiB -> 94 GiB).
- The vision tower is left out by default (text-only requests never touch it).
- The tokenizer is made here: a byte-level BPE trained on this repository's own source files,
  then extended with inert merges (a letters-only token followed by a space-led word, which the
  byte-level pre-tokenizer never puts in one piece) up to the config's vocabulary size. It
  tokenizes code like a real code BPE and has exactly the real number of entries, which is what
  the vocabulary head, sampling and the token-healing table cost. Its merges are not Gemma's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REAL_CONFIG = CONFIGS / "diffusiongemma-26B-A4B-it.json"
SPECIALS = ["<pad>", "<eos>", "<bos>"]  # ids 0, 1, 2: the ids the DiffusionGemma config names
PREFIX = "random-weights:"
BASE_MERGES = 32_000  # at most this many tokens are learned; the rest of the vocabulary is inert


def resolve_config(name: str) -> Path:
    """A config path, or the name of one kept in infill_lsp/configs/ (with or without .json)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (CONFIGS / name, CONFIGS / f"{name}.json"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
    raise FileNotFoundError(f"no model config {name!r} (a path, or one of: {known})")


def load_config(name: str, layers: int | None = None):
    """The DiffusionGemmaConfig; `layers` keeps only the first N layers (the real shapes, less memory)."""
    from transformers import DiffusionGemmaConfig

    data = json.loads(resolve_config(name).read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    if layers:
        text = data["text_config"]
        kinds = text.get("layer_types") or []
        text["num_hidden_layers"] = int(layers)
        if kinds:
            text["layer_types"] = kinds[:layers]
            text["layer_types"][-1] = "full_attention"  # as the config itself insists
    return DiffusionGemmaConfig.from_dict(data)


# -- the model -----------------------------------------------------------------------------------
@torch.no_grad()
def build_random_model(config, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0, text_only: bool = True):
    """DiffusionGemmaForBlockDiffusion with random weights, materialised once per unique tensor."""
    from transformers import DiffusionGemmaForBlockDiffusion

    device = torch.device(device)
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype)
    if text_only:  # text requests never reach the vision tower: do not spend memory on it
        model.model.encoder.vision_tower = None
        model.model.encoder.embed_vision = None

    owners: dict[int, list[tuple[torch.nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                owners[id(param)].append((module, name))
    std = float(getattr(config, "initializer_range", None) or 0.02)
    generator = torch.Generator(device=device).manual_seed(seed)
    for _, param in model.named_parameters():  # each shared tensor once
        fresh = torch.empty(param.shape, dtype=param.dtype, device=device)
        if fresh.dim() <= 1:  # RMSNorm weights, router scale / per-expert scale
            fresh.fill_(1.0)
        else:
            fresh.normal_(0.0, std, generator=generator)
        replacement = torch.nn.Parameter(fresh, requires_grad=False)
        for module, name in owners[id(param)]:
            module._parameters[name] = replacement

    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device=device)
        _init_buffers(model, module)
    model.eval()
    check_tied(model)
    return model


def _init_buffers(model, module) -> None:
    """The values from_pretrained would give the non-persistent and persistent buffers."""
    if "RotaryEmbedding" in type(module).__name__:
        model._init_weights(module)  # inverse frequencies per layer type (it has no parameters)
    for name, buffer in module._buffers.items():
        if buffer is None:
            continue
        if name == "embed_scale":
            buffer.fill_(module.scalar_embed_scale)
        elif name == "layer_scalar":
            buffer.fill_(1.0)
        elif name in ("input_min", "output_min"):
            buffer.fill_(-float("inf"))
        elif name in ("input_max", "output_max"):
            buffer.fill_(float("inf"))


def check_tied(model) -> None:
    """The encoder shares the decoder's weights and the head shares the embedding (raises otherwise)."""
    decoder, encoder = model.model.decoder, model.model.encoder.language_model
    pairs = [(model.lm_head.weight, decoder.embed_tokens.weight),
             (encoder.embed_tokens.weight, decoder.embed_tokens.weight),
             (encoder.norm.weight, decoder.norm.weight)]
    for enc_layer, dec_layer in zip(encoder.layers, decoder.layers, strict=True):
        pairs.append((enc_layer.experts.gate_up_proj, dec_layer.experts.gate_up_proj))
        pairs.append((enc_layer.self_attn.q_proj.weight, dec_layer.self_attn.q_proj.weight))
    for a, b in pairs:
        if a is not b:
            raise RuntimeError("random-weights model is not tied as the checkpoint is (encoder/decoder/head)")


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields each shared tensor once


def meta_parameter_count(config, text_only: bool = True) -> int:
    """Unique parameters of the architecture, counted on the meta device (no memory)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    if text_only:
        model.model.encoder.vision_tower = None
        model.model.encoder.embed_vision = None
    return parameter_count(model)


# -- the tokenizer -------------------------------------------------------------------------------
def repository_corpus() -> list[str]:
    """This checkout's Python sources and samples, in a stable order (the BPE's training text)."""
    root = Path(__file__).resolve().parent.parent.parent
    files = sorted([*root.glob("infill_lsp/**/*.py"), *root.glob("tests/*.py"), *root.glob("fixtures/samples/*")])
    return [p.read_text(errors="replace") for p in files if p.is_file()]


def synthetic_tokenizer(vocab_size: int, texts: list[str] | None = None, *, cache: bool = True):
    """A byte-level BPE with exactly `vocab_size` entries (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    texts = repository_corpus() if texts is None else texts
    digest = hashlib.sha256(json.dumps([vocab_size, BASE_MERGES, *texts]).encode()).hexdigest()[:16]
    cache_file = _cache_dir() / f"synthetic-bpe-{vocab_size}-{digest}.json"
    if cache and cache_file.is_file():
        tok = Tokenizer.from_file(str(cache_file))
    else:
        tok = _build_bpe(vocab_size, texts)
        if cache:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
                tok.save(str(tmp))
                tmp.replace(cache_file)
            except OSError as exc:  # a read-only home: build it every time
                log.info("not caching the synthetic tokenizer: %s", exc)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>")
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"synthetic tokenizer has {len(tokenizer)} entries, wanted {vocab_size}")
    return tokenizer


def learned_tokens(tokenizer) -> int:
    """Entries of a synthetic tokenizer that tokenization can produce (the rest are inert merges)."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    return sum(1 for token in vocab if not re.search(r"[A-Za-z]\u0120", token))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infill-lsp" / "tokenizers"


def _build_bpe(vocab_size: int, texts: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIALS) + 256:
        raise ValueError(f"vocabulary of {vocab_size} is smaller than the 256 bytes and {len(SPECIALS)} specials")
    learned = Tokenizer(models.BPE())
    learned.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, BASE_MERGES), special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    learned.train_from_iterator(texts, trainer=trainer)
    state = json.loads(learned.to_str())["model"]
    vocab: dict[str, int] = dict(state["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]

    # Inert merges: "word" + "Ġword". The byte-level pre-tokenizer splits before a space, so such a
    # pair never meets inside one pre-token: tokenization stays the learned BPE's, but the
    # vocabulary (and the head, sampling and healing table) has the full size.
    words = sorted(t for t in vocab if re.fullmatch(r"[A-Za-z]+", t))
    spaced = sorted(t for t in vocab if re.fullmatch(r"\u0120[A-Za-z]+", t))
    missing = vocab_size - len(vocab)
    if missing > len(words) * len(spaced):
        raise ValueError(f"cannot reach {vocab_size} entries from a corpus this small")
    extra = 0
    for right in spaced:
        if extra >= missing:
            break
        for left in words:
            if extra >= missing:
                break
            token = left + right
            if token not in vocab:
                vocab[token] = len(vocab)
                merges.append((left, right))
                extra += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    return tok


# -- the engine ----------------------------------------------------------------------------------
class RandomWeightsLoader:
    """Mixin for an engine class: `_load_weights` builds the model from a config instead of a checkpoint."""

    random_seed = 0
    random_layers: int | None = None

    def _load_weights(self, source: str, progress):
        config = load_config(source.removeprefix(PREFIX), self.random_layers)
        vocab = config.text_config.vocab_size
        progress(f"building a {vocab:,}-entry tokenizer", None)
        tokenizer = synthetic_tokenizer(vocab)
        progress("materialising random weights", None)  # nothing read from a file: no measured percent
        model = build_random_model(config, device=self.device, dtype=self.dtype, seed=self.random_seed)
        return tokenizer, model


def random_weights_engine(config: str, *, fast: bool = False, seed: int = 0, layers: int | None = None, **kwargs):
    """A TransformersEngine (or FastEngine) serving the config's architecture with random weights.

    `layers` keeps the first N layers only (every shape of the real model, a fraction of its memory).
    """
    from .transformers_backend import TransformersEngine

    if fast:
        from .fast import FastEngine as base
    else:
        base = TransformersEngine
    cls = type(f"RandomWeights{base.__name__}", (RandomWeightsLoader, base),
               {"random_seed": seed, "random_layers": layers})
    return cls(PREFIX + str(resolve_config(config)), **kwargs)
