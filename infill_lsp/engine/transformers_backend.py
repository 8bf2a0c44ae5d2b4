"""In-process engine on transformers' DiffusionGemmaForBlockDiffusion.

One request: tokenize -> encode the prompt once (causal encoder pass fills a KV cache) ->
repeat the cache across the candidate rows -> denoise all rows as one batch -> decode.

Prompt layouts (the checkpoint's `infill_layout` in config.json says which; none = the real
DiffusionGemma's native one):

    [BOS] + repository context + prefix window                          (default)
    [BOS] + repository context + prefix window + [SEP] + suffix window  (`suffix_window: N`, N > 0)

The suffix window is the first <= N tokens of the text after the cursor (tokenized on its own,
starting at the cursor, so it overlaps the canvas' clamped suffix head), cut after its last whole
line when the text goes on (canvas.suffix_window). SEP is the tokenizer's end marker (eos), a
control token every tokenizer has, so no vocabulary grows (the shipped weights keep working); in
the canvas it ends the middle, here it ends the prefix. Only the
part before SEP may become the encoded-prefix checkpoint (`_encode`): while the user types, the
suffix stays put but moves to later positions, so it is encoded again with the prefix's tail on
every request (<= N + 1 more tokens) and the checkpoint keeps hitting. The canvas and the
denoising loop are unchanged; the canvas' positions continue after the whole prompt.
train/holes.py trains exactly this layout.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import math
import os
import platform
import random
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import torch

from .. import repo_context
from ..types import Candidate, ContextChunk, EngineInfo, EngineTimings, InfillRequest, InfillResult
from .cancel import NEVER, CancelToken
from .canvas import TokenHealer, build_canvas, middle_lengths, suffix_window
from .denoise import DenoiseSettings, denoise

log = logging.getLogger(__name__)

# transformers 5.24 warns on every call that passes `past_key_values` (renamed `cache`); we keep the old
# name, which every release we accept takes. The warning is for us, not for the user's terminal.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)

WINDOW_STEP = 128  # the prefix window's start moves in steps of this many tokens
# A typical automatic request's prompt (a few hundred tokens of code) for choosing CPU threads.
CALIBRATION_PREFIX = "".join(f"def step_{i}(state, value):\n    total = state.get({i}, 0) + value\n"
                             f"    return total * {i}\n\n" for i in range(12)) + "def main(state):\n    return "
CALIBRATE_MAX_PARAMETERS = 200_000_000  # larger models keep torch's default threads, untimed
OTHERS_BUSY = 0.25  # cores the rest of the machine may use before a request drops to one CPU thread
HEALING_PROBE = "x"  # a word character put after a prefix that ends in whitespace, to find its cut
CHECKPOINT_STEP = 64  # the encoded-prefix checkpoint sits on a multiple of this many tokens


class PromptIds(list):
    """Prompt token ids that know how many leading ones (BOS, context, prefix window) `_encode` may
    keep as its checkpoint; a plain list is all cacheable (the default layout)."""

    def __init__(self, ids, cacheable: int):
        super().__init__(ids)
        self.cacheable = cacheable


def _snapshot(cache):
    """A copy of a DynamicCache that later appends (and batch repeats) cannot disturb."""
    clone = copy.copy(cache)
    clone.layers = [copy.copy(layer) for layer in cache.layers]
    return clone

Progress = Callable[[str, "int | None"], None]
"""(message, percent): percent is measured (the share of the weights' bytes read so far) or None."""


def _weights_bytes(path: str) -> int:
    """Bytes of tensor data in a safetensors file, from its header (8-byte length, then JSON)."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(end - begin for name, entry in header.items() if name != "__metadata__"
               for begin, end in [entry["data_offsets"]])


def _human_bytes(count: int, total: int) -> str:
    unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6) if total >= 1e6 else ("kB", 1e3)
    return f"{count / scale:,.1f} of {total / scale:,.1f} {unit}"


class WeightsMeter:
    """Counts the bytes of weights transformers reads out of safetensors files, out of their total.

    While `measure` is active on the loading thread, the files transformers opens are wrapped:
    each tensor it reads (a slice materialised, or a whole tensor) adds its bytes, and `report`
    gets ("reading weights: X of Y MB", percent) each time the whole-percent share grows. The total
    is the tensor data of every file opened (transformers opens all shards before it reads any);
    reads happen on transformers' loader threads, hence the lock. A load that bypasses
    `safe_open` (a .bin checkpoint, a mount read without mmap) is simply not measured.
    """

    _active = threading.local()
    _installed = False
    _install_lock = threading.Lock()

    def __init__(self, report: Progress):
        self.report = report
        self.total = 0
        self.read = 0
        self.percent = -1
        self._lock = threading.Lock()

    def opened(self, path) -> None:
        try:
            size = _weights_bytes(str(path))
        except Exception:  # noqa: BLE001 - only a measurement: transformers reports a bad file itself
            return
        with self._lock:
            self.total += size

    def add(self, count: int) -> None:
        with self._lock:
            self.read += count
            percent = min(100, self.read * 100 // self.total) if self.total else None
            if percent is not None and percent > self.percent:
                self.percent = percent
                self.report(f"reading weights: {_human_bytes(self.read, self.total)}", percent)

    @classmethod
    def _install(cls) -> None:
        """Route transformers' safe_open through a counting one, once (it passes the file through
        untouched when no load on the calling thread is being measured)."""
        with cls._install_lock:
            if not cls._installed:
                cls._installed = True
                from transformers import modeling_utils

                real = getattr(modeling_utils, "safe_open", None)
                if real is not None:  # a transformers that opens files otherwise: loads are not measured
                    modeling_utils.safe_open = cls._counting(real)

    @classmethod
    def _counting(cls, real):
        def counting_safe_open(filename, *args, **kwargs):
            handle = real(filename, *args, **kwargs)
            meter = getattr(cls._active, "meter", None)
            if meter is None:
                return handle
            meter.opened(filename)
            return _CountingFile(handle, meter)

        return counting_safe_open

    def measure(self):
        """Context manager: measure what the calling thread's model load reads."""
        import contextlib

        @contextlib.contextmanager
        def active():
            self._install()
            previous = getattr(self._active, "meter", None)
            self._active.meter = self
            try:
                yield self
            finally:
                self._active.meter = previous

        return active()


class _CountingFile:
    """A safetensors file handle whose reads count into a WeightsMeter."""

    def __init__(self, handle, meter: WeightsMeter):
        self._handle, self._meter = handle, meter

    def get_slice(self, name):
        return _CountingSlice(self._handle.get_slice(name), self._meter)

    def get_tensor(self, name):
        tensor = self._handle.get_tensor(name)
        self._meter.add(tensor.nbytes)
        return tensor

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._handle, name)


class _CountingSlice:
    """A lazy safetensors slice: indexing it reads from the file, and counts what it read."""

    def __init__(self, real, meter: WeightsMeter):
        self._real, self._meter = real, meter

    def __getitem__(self, index):
        tensor = self._real[index]
        self._meter.add(tensor.nbytes)
        return tensor

    def __getattr__(self, name):
        return getattr(self._real, name)


class OthersCpu:
    """CPU the rest of the machine used since the last look, in cores (Linux /proc; None elsewhere).

    The machine's busy time (/proc/stat: user, nice, system, irq, softirq, steal) minus this
    process's own (/proc/self/stat: utime, stime), over the wall time between two looks. Cheap (two
    small reads), so the engine looks before every request; steal counts, as a hypervisor that takes
    the CPU is contention too."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(x) for x in stat.readline().split()[1:9]]
            with open("/proc/self/stat", encoding="ascii", errors="replace") as own:
                after_name = own.read().rsplit(")", 1)[1].split()
            return time.monotonic(), sum(fields[:3]) + sum(fields[5:8]), int(after_name[11]) + int(after_name[12])
        except (OSError, ValueError, IndexError):
            return None

    def sample(self, min_interval: float = 0.1) -> float | None:
        """Cores used by others since the last sample; None when unknown or too soon to tell (the
        counters tick in 1/100 s: the last look is kept until `min_interval` has passed)."""
        now, last = self._read(), self._last
        if now is None or last is None:
            self._last = now
            return None
        wall = now[0] - last[0]
        if wall < min_interval:
            return None
        self._last = now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / os.sysconf("SC_CLK_TCK") / wall)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_FREE_BYTES = 64 << 20


def keep_freed_memory(limit: int = KEPT_FREE_BYTES) -> bool:
    """Let glibc keep up to `limit` bytes of freed heap instead of handing it back at once.

    A denoising step allocates and frees a few (free positions x vocabulary) float tensors of
    2-9 MB (logits, probabilities, the sampler's temporaries). By default glibc serves such blocks
    with mmap or trims them off the heap when freed, so every step touched ~600 fresh pages: ~4,800
    page faults per automatic request on the shipped model, ~10 ms of its ~160. With blocks up to
    `limit` served from the heap and up to `limit` of free heap kept, a request takes no page
    fault; the process's peak memory is unchanged (measured 416 vs 418 MB). Returns whether it
    applied (glibc only)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


class ModelNotFound(Exception):
    """The model is neither a local directory nor in the local Hugging Face cache."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def in_own_memory(model) -> None:
    """Copy every CPU parameter and buffer into memory of its own (which of them are still views of
    the checkpoint file cannot be told apart cheaply, and the copy is once, at start).

    A safetensors file already in the wanted dtype (what `infill-lsp train` exports: float32) is mapped,
    not read: the weights stay views of the file, at its unaligned offsets, and when the file is
    rewritten in place while the server runs (`cp` of a newer checkpoint over it) the next request
    reads a truncated mapping and the process dies of SIGBUS. A copy costs the weights' size once, at
    start. Tied weights stay tied (the same Parameter gets the copy)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.numel():
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def decoding_settings(decoding: dict, name: str = "") -> DenoiseSettings:
    """A checkpoint's `infill_decoding` (t_max, t_min, entropy_bound, stability, confidence,
    straggler_steps, ...) over the defaults; the step count stays the request budget's, and keys this
    version does not know are ignored with a warning."""
    defaults = DenoiseSettings()
    known = {key: value for key, value in decoding.items() if key in defaults.__dict__ and key != "steps"}
    if len(known) < len(decoding):
        log.warning("%s: ignoring infill_decoding keys %s", name, sorted(set(decoding) - set(known)))
    return DenoiseSettings(**{**defaults.__dict__, **{k: type(getattr(defaults, k))(v) for k, v in known.items()}})


class TransformersEngine:
    """Holds one DiffusionGemma checkpoint and answers infill requests, one at a time."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        prefix_tokens: int = 1024,
        suffix_head_tokens: int = 16,
        denoise_settings: DenoiseSettings | None = None,
        progress: Progress | None = None,
        threads: int | None = None,
    ):
        """`threads`: torch's CPU threads; None chooses on a CPU (`_choose_threads`)."""
        progress = progress or (lambda message, percent: None)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.prefix_tokens = prefix_tokens
        self.suffix_head_tokens = suffix_head_tokens
        self.suffix_window = 0  # tokens of the text after the cursor in the prompt (the checkpoint's layout)
        self.denoise_settings = denoise_settings or DenoiseSettings()
        self._lock = threading.Lock()
        self._others: OthersCpu | None = None  # other processes' CPU use, when requests may change threads
        self._checkpoint: tuple[tuple[int, ...], object] | None = None  # (prompt head, its KV cache)
        self.stats: Counter[str] = Counter()
        self._chunk_ids: OrderedDict[str, list[int]] = OrderedDict()  # rendered context chunk -> its ids
        self._last_context = (0, 0)  # (tokens, chunks) of repository context in the last prompt

        # Never download: a path, or a hub id already in the local cache.
        is_dir = Path(model).expanduser().is_dir()
        source = str(Path(model).expanduser()) if is_dir else model
        try:
            self.tokenizer, self.model = self._load_weights(source, progress)
        except OSError as exc:
            if is_dir:  # the directory is there; what it holds is not a checkpoint
                raise ModelNotFound(f"{source} is not a complete checkpoint ({exc}); it needs config.json, "
                                    f"the tokenizer files and model.safetensors") from exc
            raise ModelNotFound(
                f"model {model!r} is not a directory and is not in the local Hugging Face cache "
                f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); infill-lsp never "
                f"downloads weights: fetch them once with `hf download {model}` or pass a path"
            ) from exc
        except Exception as exc:
            if type(exc).__name__ != "SafetensorError":
                raise
            raise ModelNotFound(f"the weights in {source} are damaged or incomplete ({exc}): copy the checkpoint "
                                f"again (a download or copy that stopped early leaves a truncated file)") from exc
        self.model.to(self.device).eval()
        in_own_memory(self.model)
        # A checkpoint trained by `infill-lsp train` says how it was trained to see the code
        # (its prompt window and suffix head); the real DiffusionGemma keeps the settings' layout.
        layout = getattr(self.model.config, "infill_layout", None) or {}
        if layout:
            self.prefix_tokens = min(self.prefix_tokens, int(layout.get("prefix_tokens", self.prefix_tokens)))
            self.suffix_head_tokens = int(layout.get("suffix_head", self.suffix_head_tokens))
            self.suffix_window = max(0, int(layout.get("suffix_window") or 0))
        name = layout.get("name") or model
        # How its sampler runs best (temperatures chosen on held-out holes; its model card says): the
        # checkpoint's `infill_decoding`, unless the caller chose the settings.
        decoding = getattr(self.model.config, "infill_decoding", None) or {}
        if decoding and denoise_settings is None:
            self.denoise_settings = decoding_settings(decoding, name)
        # Repository context (repo_context.py): the real DiffusionGemma gets the plain-text path-comment
        # convention; a trained checkpoint only what its layout declares (infill-small: none).
        self.repo_context_layout = str(layout.get("repo_context") or "") if layout else repo_context.PATH_COMMENT
        if self.repo_context_layout not in ("", *repo_context.LAYOUTS):
            log.warning("%s declares repository context layout %r, which this version does not know; "
                        "repoContext \"auto\" leaves it off", name, self.repo_context_layout)
            self.repo_context_layout = ""
        # ... and at most as many tokens of it as it was trained with (train/loop.py infill_layout)
        self.repo_context_tokens = int(layout.get("repo_context_tokens") or 0) if layout else 0
        self.info = EngineInfo(model=name, backend="transformers", device=self.device,
                               dtype=str(self.dtype).removeprefix("torch."), repo_context=self.repo_context_layout,
                               repo_context_tokens=self.repo_context_tokens, suffix_window=self.suffix_window)

        progress("indexing vocabulary", None)
        vocab = self.model.config.text_config.vocab_size
        backend = self.tokenizer.backend_tokenizer
        texts = backend.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
        self.healer = TokenHealer(texts)
        self.newline = [("\n" in text) for text in texts] if self.suffix_window else None
        self.bos_id = self.tokenizer.bos_token_id
        self.end_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 1
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.stop_ids = tuple(sorted({self.end_id, self.pad_id}))
        # Whitespace-only tokens: a row may not end after nothing but these (denoise.forbid_blank_end).
        self.blank = torch.tensor([not text.strip() for text in texts], dtype=torch.bool)
        self.blank[list(self.stop_ids)] = False
        self.banned = torch.zeros(vocab, dtype=torch.bool)
        for special in self.tokenizer.all_special_ids:
            if special < vocab and special not in self.stop_ids:
                self.banned[special] = True
        if self.device == "cpu":
            keep_freed_memory()
        progress("warming up", None)
        self.infill(InfillRequest(prefix="def f(x):\n    return", suffix="\n"), NEVER)
        if self.device == "cpu":
            if threads is None:  # part of warming up
                self._choose_threads()
            else:
                torch.set_num_threads(max(1, threads))
            self.info = msgspec.structs.replace(self.info, threads=torch.get_num_threads())
            if threads is None and self.info.threads > 1:  # chosen here: requests may drop to one thread
                self._others = OthersCpu()
        progress("ready", 100)

    def _choose_threads(self) -> None:
        """Keep torch's default of a thread per core, or one thread, whichever answers a typical
        automatic request sooner here (the best of three runs each, the two taking turns). With
        threads that sleep while they wait one thread was ~25% faster on the 2-core CI-class machine
        (`infill-lsp bench`: 307 vs 403 ms p50 for 4 candidates); with the CLI's short spin two win
        there when it is idle. Costs a few requests' time at start."""
        cores = torch.get_num_threads()
        if cores <= 1 or self.model.num_parameters() > CALIBRATE_MAX_PARAMETERS:
            return  # a big model on a CPU (the 26B forced there): four more requests would cost minutes
        request = InfillRequest(prefix=CALIBRATION_PREFIX, suffix="\n\n", seed=0)
        stats, checkpoint = self.stats.copy(), self._checkpoint  # timing runs are no user's requests
        best = {cores: math.inf, 1: math.inf}
        for _ in range(3):  # taking turns, so a machine that slows down meanwhile weighs on both alike
            for threads in (cores, 1):
                torch.set_num_threads(threads)
                start = time.perf_counter()
                self.infill(request, NEVER)
                best[threads] = min(best[threads], time.perf_counter() - start)
        self.stats, self._checkpoint = stats, checkpoint
        chosen = min(best, key=best.get)
        torch.set_num_threads(chosen)
        log.info("CPU threads: %d (a typical request took %s)", chosen,
                 ", ".join(f"{1e3 * t:.0f} ms at {n}" for n, t in best.items()))

    def _load_weights(self, source: str, progress: Progress):
        """(tokenizer, model) from a directory or the local cache; random_weights.py builds them instead."""
        from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
        from transformers.utils import logging as transformers_logging

        # No tqdm bar on stderr: it is the LSP log (or nobody's terminal), and a bar that cannot
        # write there (a full disk, a closed pipe) left tqdm's lock held and hung the server.
        transformers_logging.disable_progress_bar()
        progress("loading tokenizer", None)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        progress("loading weights", None)
        with WeightsMeter(progress).measure():  # the percent from here on: bytes of weights read
            model = DiffusionGemmaForBlockDiffusion.from_pretrained(source, dtype=self.dtype, local_files_only=True)
        return tokenizer, model

    # -- tokenize ---------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _context_ids(self, context: Sequence[ContextChunk], path: str) -> tuple[list[int], int]:
        """Repository context laid out before the prefix (repo_context.py), at most `prefix_tokens`
        tokens or what the checkpoint was trained with (the least relevant chunks go first), and how
        many chunks fitted. Each rendered chunk is tokenized once while it stays in the ring."""
        if not context:
            return [], 0
        layout = self.repo_context_layout or repo_context.PATH_COMMENT

        def ids(text: str) -> list[int]:
            found = self._chunk_ids.get(text)
            if found is None:
                found = self._chunk_ids[text] = self._encode_text(text)
                while len(self._chunk_ids) > 128:
                    self._chunk_ids.popitem(last=False)
            else:
                self._chunk_ids.move_to_end(text)
            return found

        chunks = [ids(repo_context.render_chunk(chunk, layout)) for chunk in context]
        return repo_context.fit(chunks, ids(repo_context.render_header(path or "this file", layout)),
                                self.context_limit)

    @property
    def context_limit(self) -> int:
        """The most tokens of repository context a prompt holds, on top of the prefix window."""
        return min(self.prefix_tokens, self.repo_context_tokens or self.prefix_tokens)

    def _prompt(self, prefix: str, context: Sequence[ContextChunk] = (), path: str = "") -> tuple[list[int], str]:
        """Prompt ids for the prefix window and the healed text (the backed-off last token).

        Over-long prefixes are cut at a multiple of WINDOW_STEP tokens, so the window's start
        stays put while the user types and the encoded-prefix cache keeps hitting. Repository
        context (`context`, `path`) goes between BOS and the window, tokenized apart from it, so
        its tokens do not depend on the prefix.
        """
        ids, healed = self._healing_cut(prefix)
        if len(ids) > self.prefix_tokens:
            start = -(-(len(ids) - self.prefix_tokens) // WINDOW_STEP) * WINDOW_STEP
            ids = ids[start:]
        context_ids, kept = self._context_ids(context, path)
        self._last_context = (len(context_ids), kept)
        ids = context_ids + ids
        if self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if not ids:  # an empty file: the encoder needs at least one token
            ids = [self.pad_id]
        return ids, healed

    def _healing_cut(self, prefix: str) -> tuple[list[int], str]:
        """The prefix's ids up to the token-healing cut, and the text after the cut (`healed`: the
        middle's first token must start with it).

        The cut is where the file's own tokenization would put a token boundary: the last token is
        backed off. After whitespace that token depends on what follows: a byte-level BPE splits a
        run of spaces before a word (`\n   ` + ` x`), so `\n    ` alone is one token that the file
        never has there, and a model trained on the file's tokens, forced to restart with it, ends
        the row or garbles it (most rows of a hole after a line's indentation were empty). So a
        prefix ending in spaces or tabs is tokenized with a word character after it, and cut before
        the first token that reaches past the cursor. (At a line's start the newline is backed off as
        before: the line's first token, `\n   ` in an indented block, starts with it.)
        """
        if prefix[-1:] not in (" ", "\t"):
            ids = self._encode_text(prefix)
            last = self.healer_text(ids[-1]) if ids else ""
            if last and prefix.endswith(last):
                return ids[:-1], last
            return ids, ""
        probed = self.tokenizer(prefix + HEALING_PROBE, add_special_tokens=False, return_offsets_mapping=True)
        keep = 0
        for keep, (_, end) in enumerate(probed["offset_mapping"]):
            if end > len(prefix):
                break
        cut = probed["offset_mapping"][keep - 1][1] if keep else 0
        return probed["input_ids"][:keep], prefix[cut:]

    def _suffix_window_ids(self, suffix: str) -> list[int]:
        """The suffix window: <= `suffix_window` tokens from the cursor on, cut at a line's end."""
        chars = self.suffix_window * 16
        ids = self._encode_text(suffix[:chars])
        return suffix_window(ids, self.suffix_window, self.newline, continues=len(suffix) > chars)

    def healer_text(self, token_id: int) -> str:
        return self.tokenizer.backend_tokenizer.decode([token_id], skip_special_tokens=False)

    # -- the request ------------------------------------------------------------------------
    def infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult:
        with self._lock:
            self._threads_for_this_request()
            result = self._infill(request, cancel)
            result.timings.context_tokens, result.timings.context_chunks = self._last_context
            return result

    def _threads_for_this_request(self) -> None:
        """The chosen thread count while the rest of the machine is quiet, one thread while it is not.

        Several threads win only on an idle machine: with a 20,000-iteration OpenMP spin (cli.py) two
        threads answered the automatic request in 146-162 ms p50 on the idle 2-core machine against
        216 ms on one, but 764 ms with one core taken by another process, where one thread still
        took 216 ms. So each request looks at what others used since the last one (OthersCpu) and
        runs on one thread when that is more than OTHERS_BUSY cores."""
        others = self._others.sample() if self._others is not None else None
        if others is None:
            return  # unknown, or too soon after the last look: keep the last choice
        wanted = self.info.threads if others < OTHERS_BUSY else 1
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
        if wanted < self.info.threads:
            self.stats["requests_on_one_thread"] += 1

    def _prepare(self, request: InfillRequest):
        """Tokenize and lay out one request: prompt, healed text, slot lengths, canvas rows, healing mask, steps."""
        budget = request.budget
        prompt_ids, healed = self._prompt(request.prefix, request.context, request.path)
        if self.suffix_window:
            prompt_ids = PromptIds([*prompt_ids, self.end_id, *self._suffix_window_ids(request.suffix)],
                                   cacheable=len(prompt_ids))
        suffix_ids = self._encode_text(request.suffix[: self.suffix_head_tokens * 16])[: self.suffix_head_tokens]
        lengths = middle_lengths(budget.candidates, budget.max_middle_tokens)
        batch = build_canvas(lengths, suffix_ids, self.suffix_head_tokens, self.end_id, self.pad_id)
        allowed = self.healer.allowed_mask(healed) if healed else None
        settings = DenoiseSettings(**{**self.denoise_settings.__dict__, "steps": max(1, budget.steps)})
        return prompt_ids, healed, lengths, batch, allowed, settings

    def _infill(self, request: InfillRequest, cancel: CancelToken) -> InfillResult:
        timings = EngineTimings()
        t0 = time.perf_counter()
        prompt_ids, healed, lengths, batch, allowed, settings = self._prepare(request)
        timings.prompt_tokens = len(prompt_ids)
        t1 = time.perf_counter()
        timings.tokenize_ms = (t1 - t0) * 1e3

        cancel.raise_if_cancelled()
        cache = self._encode(prompt_ids)
        cache.batch_repeat_interleave(len(lengths))
        t2 = time.perf_counter()
        timings.encode_ms = (t2 - t1) * 1e3

        seed = request.seed if request.seed is not None else random.randrange(2**63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = denoise(
            self.model, cache, batch, settings,
            first_token_allowed=allowed, banned_tokens=self.banned, blank_tokens=self.blank,
            stop_ids=self.stop_ids, cancel=cancel, generator=generator,
        )
        timings.denoise_ms = (time.perf_counter() - t2) * 1e3
        timings.steps = out.steps
        return InfillResult(candidates=self._decode_rows(out.tokens, out.token_logprobs, lengths, healed),
                            timings=timings)

    @torch.inference_mode()
    def _encode(self, prompt_ids: list[int]):
        """The prompt's KV cache (batch 1), reusing the encoded head of the previous prompt.

        Keystrokes change only the end of the prefix, so the encoder pass is split at a stable
        checkpoint (a multiple of CHECKPOINT_STEP tokens, at least CHECKPOINT_STEP before the end of
        the cacheable part: the whole prompt, or what precedes a suffix window): the part before it
        is kept between requests and only the tail is encoded again. Cache layers rebind, never
        mutate, their tensors, so a shallow copy is a safe snapshot.
        """
        cacheable = getattr(prompt_ids, "cacheable", len(prompt_ids))
        cut = max(0, (cacheable - CHECKPOINT_STEP) // CHECKPOINT_STEP * CHECKPOINT_STEP)
        head, tail = tuple(prompt_ids[:cut]), prompt_ids[cut:]
        if head and self._checkpoint is not None and self._checkpoint[0] == head:
            cache = _snapshot(self._checkpoint[1])
            self.stats["prefix_cache_hits"] += 1
        else:
            cache = None
            if head:
                cache = self.model.model.encoder(
                    input_ids=torch.tensor([list(head)], device=self.device), use_cache=True).past_key_values
                self._checkpoint = (head, _snapshot(cache))
            self.stats["prefix_cache_misses"] += 1
        encoded = self.model.model.encoder(input_ids=torch.tensor([tail], device=self.device),
                                           past_key_values=cache, use_cache=True)
        return encoded.past_key_values

    def _decode_rows(self, tokens, logprobs, lengths: list[int], healed: str) -> list[Candidate]:
        candidates = []
        for row, m in enumerate(lengths):
            ids = tokens[row, :m].tolist()
            cut = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
            scored = logprobs[row, : min(cut + 1, m)]  # the end marker's confidence counts too
            text = self.tokenizer.backend_tokenizer.decode(ids[:cut], skip_special_tokens=False)
            if healed:
                if not text.startswith(healed):
                    continue
                text = text[len(healed):]
            candidates.append(Candidate(text=text, score=float(scored.mean()), tokens=cut))
        return candidates

    def close(self) -> None:
        pass
