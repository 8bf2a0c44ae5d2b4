"""Repository context (infill_lsp/repo_context.py): ranking, budget, eviction, ignore rules,
workspace-only, the layout, cache reuse across keystrokes, and over stdio a definition in another
open file reaching the engine's prompt."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

import msgspec
import pytest

from infill_lsp import repo_context
from infill_lsp.config import Settings, merge
from infill_lsp.repo_context import RepoContext, render_chunk, render_header
from infill_lsp.types import Budget, ContextChunk, InfillRequest

CHECKSUM = '''import zlib


def compute_checksum(payload, seed=0):
    """The CRC32 of payload, continued from seed."""
    return zlib.crc32(payload, seed) & 0xFFFFFFFF


def verify_checksum(payload, expected):
    return compute_checksum(payload) == expected
'''

UNRELATED = '''def render_banner(title, width):
    border = "=" * width
    return border + "\\n" + title.center(width) + "\\n" + border


def shout(words):
    return words.upper()
'''

MAIN = '''from checksum import compute_checksum


def send_packet(socket, payload):
    header = len(payload).to_bytes(4, "big")
    digest = compute_checksum(payload)
    socket.sendall(header + payload)
    return digest


def receive_packet(socket):
    payload = socket.recv(4096)
    return '''


def uri(path: Path) -> str:
    return path.as_uri()


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "checksum.py").write_text(CHECKSUM)
    (root / "banner.py").write_text(UNRELATED)
    (root / "main.py").write_text(MAIN)
    return root


def collector(root: Path, docs: dict[str, str], **kwargs) -> tuple[RepoContext, dict[str, str]]:
    """A collector over `docs` (name -> text), each opened in that order."""
    repo = RepoContext(**kwargs)
    repo.configure(budget_tokens=kwargs.get("budget_tokens", 512), max_files=kwargs.get("max_files", 8),
                   folders=[str(root)])
    texts = {}
    for name, text in docs.items():
        texts[uri(root / name)] = text
        repo.document(uri(root / name), text)
    return repo, texts


def main_request(repo: RepoContext, root: Path, texts: dict[str, str], text: str = MAIN):
    line = text.count("\n")
    return repo.for_request(uri(root / "main.py"), text, line, (0, line + 2), texts.get)


# -- ranking, dedup, budget -----------------------------------------------------------------------
def test_the_chunk_sharing_names_with_the_cursor_is_chosen_and_unrelated_code_is_not(workspace):
    repo, texts = collector(workspace, {"banner.py": UNRELATED, "checksum.py": CHECKSUM, "main.py": MAIN})
    chunks = main_request(repo, workspace, texts)
    assert [c.path for c in chunks] == ["checksum.py"]
    assert "def compute_checksum(payload, seed=0):" in chunks[0].text
    assert chunks[0].start_line == 0 and chunks[0].end_line == CHECKSUM.count("\n")


def test_ranking_puts_the_most_similar_chunk_last_next_to_the_prefix(workspace):
    partly = "def receive_packet_header(socket):\n    return socket.recv(4)\n\nSOCKET_TIMEOUT = 3\n"
    repo, texts = collector(workspace, {"checksum.py": CHECKSUM, "net.py": partly, "main.py": MAIN})
    chunks = main_request(repo, workspace, texts)
    focus = repo_context.identifiers(MAIN)
    scores = {c.path: repo_context.jaccard(repo_context.identifiers(c.text), focus) for c in chunks}
    assert set(scores) == {"checksum.py", "net.py"}
    assert [c.path for c in chunks] == sorted(scores, key=scores.get)  # ascending: the best is last


def test_identifiers_leave_out_keywords_and_single_letters():
    assert repo_context.identifiers("def f(x):\n    return self.total + x_1") == {"total", "x_1"}
    assert repo_context.jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)


def test_chunks_overlapping_the_documents_own_window_are_dropped_far_ones_kept(workspace):
    far = "def compute_total(values):\n    return sum(values)\n\n" + "# filler\n" * 200
    text = far + MAIN.replace("compute_checksum(payload)", "compute_total(payload)")
    repo, texts = collector(workspace, {"main.py": text})
    line = text.count("\n")
    # the whole document is in the window: nothing of it comes back
    assert repo.for_request(uri(workspace / "main.py"), text, line, (0, line + 2), texts.get) == ()
    repo.ring_focus = None  # rank again for a window that starts below the far definition
    chunks = repo.for_request(uri(workspace / "main.py"), text, line, (100, line + 2), texts.get)
    assert [(c.path, c.start_line) for c in chunks] == [("main.py", 0)]
    assert "def compute_total(values):" in chunks[0].text


def test_near_duplicates_and_repeats_of_the_window_are_dropped(workspace):
    longer = CHECKSUM + "".join(f"\n\ndef checksum_{i}(payload):\n    return compute_checksum(payload, {i})\n"
                                for i in range(8))
    copy = longer.replace("& 0xFFFFFFFF", "& 0xFFFFFFFF  # unsigned")  # a vendored copy, one line changed
    repo, texts = collector(workspace, {"checksum.py": longer, "vendored/checksum.py": copy, "main.py": MAIN})
    chunks = main_request(repo, workspace, texts)  # two chunks each (42 lines): one of each pair is taken
    assert sorted(c.start_line for c in chunks) == [0, 32]
    # a chunk whose lines are all in the window already adds nothing
    echo = MAIN.split("\n\n\n")[1]
    repo, texts = collector(workspace, {"echo.py": echo + "\n", "main.py": MAIN})
    assert main_request(repo, workspace, texts) == ()


def test_the_budget_and_the_file_limit_hold(workspace):
    docs = {f"lib{i}.py": CHECKSUM.replace("compute_checksum", f"compute_checksum_{i}") + f"\nsend_packet{i} = 1\n"
            for i in range(6)}
    docs["main.py"] = MAIN
    repo, texts = collector(workspace, docs, budget_tokens=200)
    chunks = main_request(repo, workspace, texts)
    assert chunks and sum(len(render_chunk(c)) for c in chunks) <= 200 * repo_context.CHARS_PER_TOKEN
    repo, texts = collector(workspace, docs, budget_tokens=4096, max_files=2)
    assert len({c.path for c in main_request(repo, workspace, texts)}) == 2
    repo, texts = collector(workspace, docs, budget_tokens=0)
    assert main_request(repo, workspace, texts) == ()


# -- a stable ring, eviction ----------------------------------------------------------------------
def test_the_ring_stays_put_while_typing_and_changes_on_idle(workspace):
    repo, texts = collector(workspace, {"checksum.py": CHECKSUM, "main.py": MAIN})
    main = uri(workspace / "main.py")
    first = main_request(repo, workspace, texts)
    other = "def receive_packet_into(socket, buffer):\n    return socket.recv_into(buffer)\n\nPACKET = 1\n"
    repo.document(uri(workspace / "net.py"), other)  # opened while the user types in main.py
    texts[uri(workspace / "net.py")] = other
    typed = MAIN
    for char in "payload":
        typed += char
        repo.edited(main, [typed.count("\n")])
        assert main_request(repo, workspace, texts, typed) == first  # byte for byte: the prompt head holds
    assert repo.stats["ringChanges"] == 1
    lines = lambda text, line: (0, line + 2)  # noqa: E731
    assert repo.idle_refresh(texts.get, lines) is True  # typing paused: ranked again
    after = main_request(repo, workspace, texts, typed)
    assert after[: len(first)] == first and {c.path for c in after} == {"checksum.py", "net.py"}  # kept in place
    assert repo.idle_refresh(texts.get, lines) is False  # nothing new: not even ranked


def test_a_full_ring_evicts_the_least_relevant_chunk(workspace):
    weak = "def send_report(socket):\n    socket.close()\n\nREPORTS = []\n"
    repo, texts = collector(workspace, {"weak.py": weak, "main.py": MAIN}, budget_tokens=100)  # 300 characters
    assert [c.path for c in main_request(repo, workspace, texts)] == ["weak.py"]
    repo.document(uri(workspace / "checksum.py"), CHECKSUM)
    texts[uri(workspace / "checksum.py")] = CHECKSUM
    assert repo.idle_refresh(texts.get, lambda text, line: (0, line + 2))
    assert [c.path for c in main_request(repo, workspace, texts)] == ["checksum.py"]


def test_an_edited_region_of_another_file_is_a_candidate(workspace):
    long_tail = "".join(f"def helper_{i}(x):\n    return x\n\n" for i in range(40))
    other = long_tail + "def compute_checksum_fast(payload):\n    return payload\n"
    repo, texts = collector(workspace, {"main.py": MAIN})
    texts[uri(workspace / "fast.py")] = other  # open, but only its edit is known here
    repo.edited(uri(workspace / "fast.py"), [other.count("\n")])
    chunks = main_request(repo, workspace, texts)
    assert [c.path for c in chunks] == ["fast.py"] and "compute_checksum_fast" in chunks[0].text


def test_pool_and_edits_are_bounded_oldest_first(workspace, monkeypatch):
    monkeypatch.setattr(repo_context, "MAX_POOL_FILES", 3)
    repo, _ = collector(workspace, {f"f{i}.py": CHECKSUM for i in range(5)})
    assert [Path(u).name for u in repo.pool] == ["f2.py", "f3.py", "f4.py"] and repo.stats["evicted"] == 2
    main = uri(workspace / "f4.py")
    repo.edited(main, [line * repo_context.CHUNK_LINES for line in range(repo_context.MAX_EDITS + 4)])
    assert len(repo.edits) == repo_context.MAX_EDITS and repo.edits[0].line == 4 * repo_context.CHUNK_LINES
    repo.edited(main, [repo.edits[0].line + 1])  # close to a known edit: merged, moved to the end
    assert len(repo.edits) == repo_context.MAX_EDITS and repo.edits[-1].line == 4 * repo_context.CHUNK_LINES + 1
    repo.closed(main)
    assert repo.edits == [] and main not in repo.pool


def test_closing_a_document_takes_its_chunks_out_of_the_ring_at_once(workspace):
    repo, texts = collector(workspace, {"checksum.py": CHECKSUM, "main.py": MAIN})
    assert [c.path for c in main_request(repo, workspace, texts)] == ["checksum.py"]
    repo.closed(uri(workspace / "checksum.py"))
    assert main_request(repo, workspace, texts) == () and repo.pool.keys() == {uri(workspace / "main.py")}


def test_lines_between_follows_lsp_line_breaks():
    text = "a\nb\nc\nd"
    assert repo_context.lines_between(text, 1, 3) == ["b\n", "c\n"]
    assert repo_context.lines_between(text, 3, 9) == ["d"] and repo_context.lines_between(text, 5, 9) == []
    assert repo_context.lines_between("a\r\nb\rc\n", -2, 2) == ["a\r\n", "b\r"]


# -- what may be read -----------------------------------------------------------------------------
def test_gitignore_rules_decide_what_may_be_read(tmp_path):
    root = tmp_path / "repo"
    (root / ".git" / "info").mkdir(parents=True)
    (root / ".git" / "info" / "exclude").write_text("local_only.py\n")
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n/generated.py\n")
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / ".gitignore").write_text("secret_*.py\n")
    admission = repo_context.Admission()
    admission.set_folders([str(root)])
    allowed = {
        "main.py": True, "debug.log": False, "keep.log": True, "build/out.py": False, "pkg/build/x.py": False,
        "generated.py": False, "pkg/generated.py": True, "pkg/secret_key.py": False, "secret_key.py": True,
        "pkg/sub/secret_x.py": False, "local_only.py": False, ".git/config": False, ".env": False,
        "pkg/server.pem": False,
    }
    for name, ok in allowed.items():
        assert (admission.relative_path(uri(root / name)) == name) is ok, name
    # a .gitignore saved later is honoured (the server re-decides when one is saved)
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n/generated.py\nmain.py\n")
    admission.forget()
    assert admission.relative_path(uri(root / "main.py")) is None


def test_only_files_inside_the_workspace_folders(tmp_path):
    inside, outside = tmp_path / "ws", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (outside / "private.py").write_text(CHECKSUM)
    os.symlink(outside / "private.py", inside / "link.py")
    repo, texts = collector(inside, {"main.py": MAIN})
    for name, doc in (("elsewhere/private.py", outside / "private.py"), ("link", inside / "link.py")):
        repo.document(uri(doc), CHECKSUM)
        assert uri(doc) not in repo.pool, name
    for odd in ("untitled:Untitled-1", "https://example.com/checksum.py", "file:///"):
        repo.document(odd, CHECKSUM)
        assert odd not in repo.pool
    assert main_request(repo, inside, texts) == ()
    no_folders = RepoContext()
    no_folders.document(uri(inside / "main.py"), CHECKSUM)
    assert no_folders.pool == {}


def test_a_folder_removed_from_the_workspace_takes_its_documents_out_of_the_context(tmp_path):
    """What came from a folder no longer in the workspace (its documents' chunks, the ring chosen
    with them) reaches no prompt, as if those documents were closed."""
    kept, removed = tmp_path / "kept", tmp_path / "removed"
    kept.mkdir()
    removed.mkdir()
    repo = RepoContext()
    repo.configure(budget_tokens=512, max_files=8, folders=[str(kept), str(removed)])
    repo.document(uri(removed / "checksum.py"), CHECKSUM)
    texts = {uri(kept / "main.py"): MAIN}
    repo.document(uri(kept / "main.py"), MAIN)
    assert [c.path for c in main_request(repo, kept, texts)] == ["checksum.py"]  # the precondition
    repo.configure(budget_tokens=512, max_files=8, folders=[str(kept)])
    assert uri(removed / "checksum.py") not in repo.pool
    assert main_request(repo, kept, texts) == ()
    repo.configure(budget_tokens=512, max_files=8, folders=[str(kept)])  # the same folders: nothing to do
    assert list(repo.pool) == [uri(kept / "main.py")]


# -- layout ---------------------------------------------------------------------------------------
def test_layout_headers_follow_the_files_comment_syntax():
    assert render_header("pkg/util.py") == "# path: pkg/util.py\n"
    assert render_header("src/lib.rs") == "// path: src/lib.rs\n"
    assert render_header("init.lua") == "-- path: init.lua\n"
    assert render_header("index.html") == "<!-- path: index.html -->\n"
    assert render_chunk(ContextChunk(path="a.py", text="x = 1")) == "# path: a.py\nx = 1\n\n"


def test_fit_drops_the_least_relevant_chunks_first():
    assert repo_context.fit([[1, 2], [3, 4, 5], [6]], [9], 10) == ([1, 2, 3, 4, 5, 6, 9], 3)
    assert repo_context.fit([[1, 2], [3, 4, 5], [6]], [9], 5) == ([3, 4, 5, 6, 9], 2)
    assert repo_context.fit([[1, 2, 3]], [9], 3) == ([], 0)  # no chunk fits: no header either
    assert repo_context.fit([], [9], 10) == ([], 0)


# -- settings -------------------------------------------------------------------------------------
def test_settings_over_lsp():
    settings = merge(Settings(), {"repoContext": "on", "repoContextTokens": 256, "repoContextFiles": 3})
    assert settings.repo_context == "on" and settings.repo_context_limits() == (256, 3)
    assert merge(settings, {"repoContext": "sometimes"}).repo_context == "on"  # a bad value is dropped
    assert merge(Settings(), {"repoContextTokens": 10**9}).repo_context_limits()[0] == 8192
    assert settings.repo_context_limits(128) == (128, 3) and settings.repo_context_limits(1024) == (256, 3)
    assert Settings().repo_context == "auto"
    assert Settings().repo_context_enabled("path-comment") and not Settings().repo_context_enabled("")
    assert merge(Settings(), {"repoContext": "on"}).repo_context_enabled("")
    assert not merge(Settings(), {"repoContext": "off"}).repo_context_enabled("path-comment")


# -- the engine -----------------------------------------------------------------------------------
CONTEXT = (ContextChunk(path="banner.py", text=UNRELATED), ContextChunk(path="checksum.py", text=CHECKSUM))


def test_the_context_goes_before_the_prefix_in_the_documented_layout(engine):
    assert engine.info.repo_context == "path-comment"  # the tiny fixture, like the real model, has no infill_layout
    ids, healed = engine._prompt(MAIN, CONTEXT, "main.py")
    plain, plain_healed = engine._prompt(MAIN)
    assert healed == plain_healed and ids[0] == plain[0] == engine.bos_id
    assert ids[-(len(plain) - 1):] == plain[1:]  # the window is tokenized as without context
    head = engine.tokenizer.backend_tokenizer.decode(ids[1:len(ids) - len(plain) + 1], skip_special_tokens=False)
    assert head == ("# path: banner.py\n" + UNRELATED + "\n# path: checksum.py\n" + CHECKSUM + "\n"
                    "# path: main.py\n")
    result = engine.infill(InfillRequest(prefix=MAIN, suffix="\n", context=CONTEXT, path="main.py", seed=1,
                                         budget=Budget(candidates=2, max_middle_tokens=4, steps=2)))
    assert result.timings.context_chunks == 2
    assert result.timings.context_tokens == len(ids) - len(plain)
    assert result.timings.prompt_tokens == len(ids)


def test_the_engine_caps_the_context_in_tokens(engine, monkeypatch):
    last = len(engine._encode_text(render_chunk(CONTEXT[1]))) + len(engine._encode_text(render_header("main.py")))
    monkeypatch.setattr(engine, "prefix_tokens", last + 5)
    ids, _ = engine._prompt("x = ", CONTEXT, "main.py")
    assert engine._last_context == (last, 1)  # banner.py, the least relevant chunk, dropped
    text = engine.tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)
    assert "banner.py" not in text and "# path: checksum.py" in text


def test_the_encoded_prefix_cache_keeps_hitting_across_keystrokes(engine):
    """The checkpoint sits on a multiple of 64 tokens at least 64 before the end: keystrokes that
    leave it there reuse the encoded head, context included. (The prefix is padded so that the
    four typed characters do not move it; every 64 tokens typed it moves, as without context.)"""
    budget = Budget(candidates=2, max_middle_tokens=4, steps=1)
    base = MAIN
    while len(engine._prompt(base, CONTEXT, "main.py")[0]) % 64 >= 56:
        base = "#\n" + base
    request = InfillRequest(prefix=base, suffix="\n", context=CONTEXT, path="main.py", seed=1, budget=budget)
    engine.infill(request)
    hits, misses = engine.stats["prefix_cache_hits"], engine.stats["prefix_cache_misses"]
    typed = request
    for char in "pay":  # the user types on; the ring is unchanged
        typed = msgspec.structs.replace(typed, prefix=typed.prefix + char)
        engine.infill(typed)
    assert engine.stats["prefix_cache_hits"] == hits + 3 and engine.stats["prefix_cache_misses"] == misses
    # a new ring (after an idle refresh) costs one miss, then hits again
    moved = msgspec.structs.replace(typed, context=CONTEXT[::-1])
    engine.infill(moved)
    assert engine.stats["prefix_cache_misses"] == misses + 1
    engine.infill(msgspec.structs.replace(moved, prefix=moved.prefix + "l"))
    assert engine.stats["prefix_cache_hits"] == hits + 4


SINGLE_FILES = {"name": "single-files", "max_middle": 32, "prefix_tokens": 511, "suffix_head": 16}  # no repo_context


def test_a_checkpoint_without_a_declared_layout_is_off_under_auto(tmp_path):
    from conftest import with_layout

    from infill_lsp.engine.transformers_backend import TransformersEngine

    plain = TransformersEngine(str(with_layout(tmp_path / "single", SINGLE_FILES)), device="cpu", dtype="float32")
    assert plain.info.repo_context == ""  # a checkpoint trained on single files declares no context layout
    assert not Settings().repo_context_enabled(plain.info.repo_context)


def test_the_shipped_model_declares_the_context_layout_it_was_trained_with():
    """infill-small continues the repository-context run (configs/repo-context.toml): under "auto"
    the server puts context in its prompt, up to the 256 tokens it was trained with."""
    from infill_lsp.engine import SHIPPED_MODEL
    from infill_lsp.engine.transformers_backend import TransformersEngine

    small = TransformersEngine(str(SHIPPED_MODEL), device="cpu", dtype="float32")
    assert small.info.repo_context == "path-comment" and small.info.repo_context_tokens == 256
    assert Settings().repo_context_enabled(small.info.repo_context)


def test_a_checkpoint_declaring_the_layout_gets_it(tiny_model_path, tmp_path):
    import json

    from infill_lsp.engine.transformers_backend import TransformersEngine

    copy = tmp_path / "declared"
    shutil.copytree(tiny_model_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["infill_layout"] = {"name": "declared", "prefix_tokens": 512, "repo_context": "path-comment"}
    (copy / "config.json").write_text(json.dumps(config))
    assert TransformersEngine(str(copy), device="cpu").info.repo_context == "path-comment"


def test_http_engine_lays_the_context_out_the_same_way():
    from infill_lsp.engine.http_backend import HttpEngine, ServerFacts, build_requests

    facts = ServerFacts(model="google/diffusiongemma-26B-A4B-it", owned_by="vllm", max_model_len=8192,
                        vocab_size=262144, canvas_limit=64, bos=[2], end_id=1, pad_id=0)
    http = object.__new__(HttpEngine)  # no server: /tokenize answered here, one id per character
    http.facts, http.prefix_tokens, http._context_cache = facts, 1024, OrderedDict()
    asked = []

    async def tokenize(model, text, special):
        asked.append(text)
        return [1000 + ord(ch) for ch in text]

    http._tokenize = tokenize
    request = InfillRequest(prefix="p", suffix="", context=CONTEXT, path="main.py")
    ids, kept = asyncio.run(http._context_ids(request))
    expected = "".join(render_chunk(c) for c in CONTEXT) + render_header("main.py")
    assert kept == 2 and ids == [1000 + ord(ch) for ch in expected]
    asyncio.run(http._context_ids(request))
    assert len(asked) == 3  # each rendered chunk and the header tokenized once
    body = build_requests(facts, request, list(range(10, 3000)), [], random.Random(0), context_ids=ids)[0]
    assert body["prompt"][:1 + len(ids)] == [2, *ids]
    window = body["prompt"][1 + len(ids):]
    assert window == list(range(10, 3000))[-len(window):] and len(window) <= 1024
    # our own engine windows the decoded prompt at its prefix_tokens again: the whole prompt stays under it
    own = msgspec.structs.replace(facts, owned_by="infill-lsp")
    body = build_requests(own, request, list(range(10, 3000)), [], random.Random(0), context_ids=ids)[0]
    assert body["prompt"][:1 + len(ids)] == [2, *ids] and len(body["prompt"]) <= 1 + 1024 - 16


# -- over stdio -----------------------------------------------------------------------------------
async def test_documents_open_before_their_folder_joins_the_workspace_become_context_then(workspace):
    """A document opened while its folder was not in the workspace was not admitted; when the folder
    is added (workspace/didChangeWorkspaceFolders, or repoContext turned on again) it is read again,
    and when the folder is removed it goes."""
    from lsprotocol import types
    from lsp_harness import Editor

    editor = Editor()
    try:
        await editor.start(init_options={"repoContext": "on", "seed": 7, "candidates": 2, "steps": 2, "maxTokens": 8})
        editor.open(uri(workspace / "checksum.py"), CHECKSUM)
        editor.open(uri(workspace / "main.py"), MAIN)
        assert (await editor.stats())["repoContext"]["files"] == 0  # no workspace folder yet
        folder = types.WorkspaceFolder(uri(workspace), "ws")
        editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=[folder], removed=[])))
        assert (await editor.stats())["repoContext"]["files"] == 2
        editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"infill": {"repoContext": "off"}}))
        assert (await editor.stats())["repoContext"]["files"] == 0
        editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"infill": {"repoContext": "on"}}))
        assert (await editor.stats())["repoContext"]["files"] == 2
        editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=[], removed=[folder])))
        assert (await editor.stats())["repoContext"]["files"] == 0
    finally:
        await editor.close()



def _git(root: Path, *args: str) -> None:
    if shutil.which("git"):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


async def test_a_definition_in_another_open_file_reaches_the_prompt(workspace):
    from lsprotocol import types
    from lsp_harness import Editor

    (workspace / ".gitignore").write_text("private_*.py\n")
    private = CHECKSUM.replace("compute_checksum", "compute_checksum_private")
    (workspace / "private_keys.py").write_text(private)
    _git(workspace, "init", "-q")
    editor = Editor()
    try:
        await editor.start(init_options={"repoContext": "on", "seed": 7, "candidates": 2, "steps": 2, "maxTokens": 8})
        editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder(uri(workspace), "ws")], removed=[])))
        editor.open(uri(workspace / "checksum.py"), CHECKSUM)
        editor.open(uri(workspace / "banner.py"), UNRELATED)
        editor.open(uri(workspace / "private_keys.py"), private)  # ignored by .gitignore: never read
        editor.open(uri(workspace / "main.py"), MAIN)
        assert not (await editor.wait_ready())["engineError"]
        line = MAIN.count("\n")
        await editor.complete(uri(workspace / "main.py"), line, len(MAIN.split("\n")[-1]), invoked=False)
        stats = await editor.stats()
        assert [c["path"] for c in stats["lastContext"]] == ["checksum.py"]
        assert stats["lastTimings"]["context_chunks"] == 1 and stats["lastTimings"]["context_tokens"] > 50
        assert stats["repoContext"]["files"] == 3  # checksum, banner, main: not the ignored file

        # the user types a character: the same context, byte for byte
        editor.change(uri(workspace / "main.py"), 2, (line, 11), (line, 11), "p")
        await editor.complete(uri(workspace / "main.py"), line, 12, invoked=False)
        again = await editor.stats()
        assert again["lastContext"] == stats["lastContext"]
        assert again["lastTimings"]["context_tokens"] == stats["lastTimings"]["context_tokens"]
        assert again["repoContext"]["ringChanges"] == 1

        # off: nothing is sent, and what was gathered is dropped
        editor.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"infill": {"repoContext": "off"}}))
        await editor.complete(uri(workspace / "main.py"), line, 12, invoked=True)
        off = await editor.stats()
        assert off["lastContext"] == [] and off["lastTimings"]["context_tokens"] == 0
        assert off["repoContext"]["files"] == 0
    finally:
        await editor.close()


async def test_under_auto_a_checkpoint_without_the_layout_finishes_names_from_the_context(workspace, tmp_path):
    """A checkpoint that declares no context layout (trained on single files): under
    "auto" its prompt stays as trained (no context in it), but what was gathered still finishes the
    name being typed (names.py): a name defined only in another open file, typed halfway in
    main.py, is the first suggestion."""
    from lsprotocol import types
    from lsp_harness import Editor, apply

    main = MAIN + "verify_ch"
    editor = Editor()
    try:
        from conftest import with_layout

        await editor.start("--model", str(with_layout(tmp_path / "single", SINGLE_FILES)),
                           init_options={"seed": 7, "candidates": 2, "steps": 2, "maxTokens": 8})
        editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder(uri(workspace), "ws")], removed=[])))
        editor.open(uri(workspace / "checksum.py"), CHECKSUM)
        editor.open(uri(workspace / "main.py"), main)
        assert not (await editor.wait_ready())["engineError"]
        line = main.count("\n")
        items = (await editor.complete(uri(workspace / "main.py"), line, len(main.split("\n")[-1]), invoked=False)).items
        stats = await editor.stats()
        assert stats["repoContext"]["use"] == "names"
        assert stats["lastContext"] == [] and stats["lastTimings"]["context_tokens"] == 0  # not in the prompt
        assert items and apply(main, line, items[0]).split("\n")[line].startswith("    return verify_checksum")

        editor.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"infill": {"completeNames": False}}))
        await editor.complete(uri(workspace / "main.py"), line, len(main.split("\n")[-1]), invoked=True)
        assert (await editor.stats())["repoContext"]["use"] == "off"
    finally:
        await editor.close()


def test_the_server_selects_context_for_the_checkpoints_own_budget():
    """A checkpoint trained with at most N context tokens (infill_layout.repo_context_tokens) gets
    chunks chosen for N: chosen for the setting's larger budget, the engine would cut them from the
    least relevant end, and one chunk over N would leave none."""
    from pygls.workspace import Workspace

    from infill_lsp.lsp.server import build_server
    from infill_lsp.types import EngineInfo

    class Engine:
        def __init__(self, cap: int):
            self.info = EngineInfo(model="m", backend="test", repo_context="path-comment", repo_context_tokens=cap)

    for cap, expected in ((256, 256), (0, 512), (4096, 512)):
        server = build_server(Settings(), engine=Engine(cap))
        server.protocol._workspace = Workspace(None)  # as after `initialize`, with no folder
        assert server._configure_repo()
        assert server.repo.budget_tokens == expected
        assert server.repo.budget_chars == int(expected * repo_context.CHARS_PER_TOKEN)
