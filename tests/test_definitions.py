"""The definition index (infill_lsp/definitions.py): what a walk finds and what it must not read,
updates per file, definitions of names used near the cursor becoming repository context, the index
built off the request path, and over stdio a function in a file the editor never opened reaching the
prompt."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from infill_lsp import definitions, repo_context
from infill_lsp.definitions import DefinitionIndex, extract
from infill_lsp.repo_context import RepoContext

UTIL = '''"""Helpers."""
import zlib

RETRY_LIMIT = 5


def compute_checksum(payload, seed=0):
    """The CRC32 of payload."""
    return zlib.crc32(payload, seed) & 0xFFFFFFFF


class PacketWriter:
    def __init__(self, socket):
        self.socket = socket

    @staticmethod
    def frame_packet(payload):
        return len(payload).to_bytes(4, "big") + payload
'''

APP_JS = '''import { render } from "./view.js";

// Formats a price for display.
export function formatPrice(amount, currency) {
  return `${amount.toFixed(2)} ${currency}`;
}

export class CartModel {
  addProduct(product) {
    this.products.push(product);
  }
}

const DEFAULT_CURRENCY = "EUR";
'''

MAIN = '''from pkg.util import compute_checksum


def send_packet(socket, payload):
    digest = compute_checksum(payload)
    socket.sendall(payload)
    return digest


def receive_packet(socket):
    payload = socket.recv(4096)
    return compute_checksum('''


def uri(path: Path) -> str:
    return path.as_uri()


def names(index: DefinitionIndex, *wanted: str) -> dict[str, list[tuple[str, int, int]]]:
    return {name: sorted((d.path, d.start, d.end) for d in found) for name, found in index.lookup(wanted).items()}


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "web").mkdir()
    (root / "pkg" / "util.py").write_text(UTIL)
    (root / "web" / "app.js").write_text(APP_JS)
    (root / ".gitignore").write_text("secret_*.py\ngenerated/\n")
    (root / "secret_tokens.py").write_text("def load_secret_token():\n    return 'hunter2'\n")
    (root / "generated").mkdir()
    (root / "generated" / "schema.py").write_text("def generated_schema():\n    return {}\n")
    (root / "node_modules" / "left-pad").mkdir(parents=True)
    (root / "node_modules" / "left-pad" / "index.js").write_text("function leftPad(s, n) {\n  return s;\n}\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "site.py").write_text("def venv_helper():\n    return 1\n")
    (root / "id_rsa_tools.py").write_text("def private_key_helper():\n    return 1\n")  # a secret's name
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.py").write_text("def outside_function():\n    return 1\n")
    (outside / "lib").mkdir()
    (outside / "lib" / "more.py").write_text("def outside_dir_function():\n    return 1\n")
    os.symlink(outside / "private.py", root / "linked.py")
    os.symlink(outside / "lib", root / "linked_dir")
    return root


def built(root: Path) -> DefinitionIndex:
    index = DefinitionIndex()
    index.watch([os.path.realpath(root)])
    assert index.wait()
    return index


# -- extraction -----------------------------------------------------------------------------------
def test_definitions_and_their_lines_in_each_language():
    assert extract("python", UTIL.encode()) == [
        ("RETRY_LIMIT", "variable", 3, 4), ("compute_checksum", "function", 6, 9), ("PacketWriter", "class", 11, 18),
        ("__init__", "method", 12, 14), ("frame_packet", "method", 15, 18)]
    assert extract("javascript", APP_JS.encode()) == [
        ("formatPrice", "function", 2, 6), ("CartModel", "class", 7, 12), ("addProduct", "method", 8, 11),
        ("DEFAULT_CURRENCY", "variable", 13, 14)]
    go = b"package p\n\n// Sum adds.\nfunc Sum(a, b int) int {\n\treturn a + b\n}\n\nfunc (r *Ring) Push(v int) {}\n\n" \
         b"type Ring struct{ items []int }\n\nconst Limit = 3\n"
    rust = b"/// Adds.\npub fn add(a: i32) -> i32 {\n    a\n}\n\nimpl Ring {\n    pub fn push(&mut self) {}\n}\n" \
           b"struct Ring;\n"
    ts = b"export interface Shape {\n  area(): number;\n}\ntype Id = string;\nexport abstract class Base {\n" \
         b"  abstract draw(): void;\n}\n"
    expected = {
        "go": [("Sum", "function", 2, 6), ("Push", "method", 7, 8), ("Ring", "type", 9, 10), ("Limit", "constant", 11, 12)],
        "rust": [("add", "function", 0, 4), ("push", "method", 6, 7), ("Ring", "struct", 8, 9)],
        "typescript": [("Shape", "interface", 0, 3), ("Id", "type", 3, 4), ("Base", "class", 4, 7),
                       ("draw", "method", 5, 6)],
    }
    for language, source in (("go", go), ("rust", rust), ("typescript", ts)):
        if definitions.language_of("x." + {"go": "go", "rust": "rs", "typescript": "ts"}[language]) is None:
            continue  # that grammar's wheel is not installed
        assert extract(language, source) == expected[language], language


def test_a_definitions_text_is_cut_like_a_chunk():
    long = "def long_function():\n" + "".join(f"    x_{i} = {i}\n" for i in range(100))
    (found,) = definitions.definitions_of("python", long, "/r/long.py", "file:///r/long.py", "long.py")
    assert (found.start, found.end) == (0, definitions.DEF_LINES)
    assert found.text == "".join(long.splitlines(keepends=True)[: definitions.DEF_LINES])


# -- the walk -------------------------------------------------------------------------------------
def test_a_walk_finds_the_workspaces_definitions_and_nothing_it_must_not_read(workspace):
    index = built(workspace)
    found = names(index, "compute_checksum", "frame_packet", "PacketWriter", "RETRY_LIMIT", "formatPrice",
                  "CartModel", "addProduct", "DEFAULT_CURRENCY")
    assert found == {
        "compute_checksum": [("pkg/util.py", 6, 9)], "frame_packet": [("pkg/util.py", 15, 18)],
        "PacketWriter": [("pkg/util.py", 11, 18)], "RETRY_LIMIT": [("pkg/util.py", 3, 4)],
        "formatPrice": [("web/app.js", 2, 6)], "CartModel": [("web/app.js", 7, 12)],
        "addProduct": [("web/app.js", 8, 11)], "DEFAULT_CURRENCY": [("web/app.js", 13, 14)],
    }
    (definition,) = index.lookup(["compute_checksum"])["compute_checksum"]
    assert definition.text == "".join(UTIL.splitlines(keepends=True)[6:9])
    assert definition.uri == uri(Path(os.path.realpath(workspace)) / "pkg" / "util.py")
    assert index.lookup(["formatPrice"])["formatPrice"][0].text.startswith("// Formats a price")  # its comment
    never = ("load_secret_token", "generated_schema", "leftPad", "venv_helper", "private_key_helper",
             "outside_function", "outside_dir_function", "__init__")
    assert index.lookup(never) == {}
    summary = index.summary()
    assert summary["files"] == 2 and not summary["building"] and summary["walks"] == 1
    index.close()


def test_limits_on_files_and_sizes(workspace, monkeypatch):
    (workspace / "pkg" / "huge.py").write_text("def huge_function():\n    return 1\n" + "# pad\n" * 200)
    monkeypatch.setattr(definitions, "MAX_FILE_BYTES", 1000)
    index = built(workspace)
    assert "huge_function" not in index.lookup(["huge_function"]) and index.stats["skipped"] == 1
    index.close()
    monkeypatch.setattr(definitions, "MAX_FILE_BYTES", 256 * 1024)
    monkeypatch.setattr(definitions, "MAX_FILES", 1)
    index = built(workspace)
    assert index.summary()["files"] == 1
    index.close()


def test_no_folders_no_walk_and_nothing_outside_them(tmp_path, workspace):
    index = DefinitionIndex()
    index.update(uri(workspace / "pkg" / "util.py"), UTIL)  # no folders known yet: nothing is read
    assert index._thread is None and index.lookup(["compute_checksum"]) == {}
    index = built(workspace / "web")  # a folder inside the repository: only what is below it
    assert set(index.lookup(["compute_checksum", "formatPrice"])) == {"formatPrice"}
    index.update(uri(workspace / "pkg" / "util.py"), UTIL)  # opened, but outside the folder
    assert index.wait() and index.lookup(["compute_checksum"]) == {}
    index.close()


# -- updates --------------------------------------------------------------------------------------
def test_updates_on_open_save_close_delete_and_gitignore(workspace):
    index = built(workspace)
    util = workspace / "pkg" / "util.py"
    saved = UTIL + "\n\ndef compute_digest(payload):\n    return compute_checksum(payload)\n"
    index.update(uri(util), saved)  # didSave: the editor's text
    assert index.wait()
    assert names(index, "compute_digest") == {"compute_digest": [("pkg/util.py", 20, 22)]}
    index.update(uri(util))  # didClose: the disk again (the edit was never written)
    assert index.wait() and index.lookup(["compute_digest"]) == {}
    fresh = workspace / "web" / "cart.js"
    fresh.write_text("export function checkoutCart(cart) {\n  return cart;\n}\n")
    index.update(uri(fresh))
    assert index.wait() and names(index, "checkoutCart") == {"checkoutCart": [("web/cart.js", 0, 3)]}
    fresh.unlink()  # workspace/didDeleteFiles
    index.update(uri(fresh))
    assert index.wait() and index.lookup(["checkoutCart"]) == {}
    index.update(uri(workspace / "secret_tokens.py"), "def load_secret_token():\n    return 1\n")  # opened: still ignored
    assert index.wait() and index.lookup(["load_secret_token"]) == {}
    shutil.rmtree(workspace / "web")  # a directory deleted: what was in it goes
    index.update(uri(workspace / "web"))
    assert index.wait() and index.lookup(["formatPrice"]) == {}
    (workspace / ".gitignore").write_text("secret_*.py\ngenerated/\npkg/\n")  # saved: walked again
    parsed = index.stats["parsed"]
    index.rewalk()
    assert index.wait() and index.lookup(["compute_checksum"]) == {} and index.summary()["files"] == 0
    (workspace / ".gitignore").write_text("secret_*.py\n")
    index.rewalk()
    assert index.wait() and set(index.lookup(["compute_checksum", "generated_schema"])) == {
        "compute_checksum", "generated_schema"}
    assert index.stats["parsed"] == parsed + 2
    index.rewalk()  # nothing changed: nothing parsed again
    assert index.wait() and index.stats["parsed"] == parsed + 2
    index.close()


# -- as repository context ------------------------------------------------------------------------
def collector(root: Path, index: DefinitionIndex | None = None) -> RepoContext:
    repo = RepoContext(definitions=index if index is not None else DefinitionIndex())
    repo.configure(budget_tokens=512, max_files=8, folders=[str(root)])
    return repo


def request(repo: RepoContext, root: Path, text: str = MAIN, name: str = "main.py", offset: int | None = None):
    line = text.count("\n")
    repo.document(uri(root / name), text)
    return repo.for_request(uri(root / name), text, line, (0, line + 2), {uri(root / name): text}.get,
                            offset=offset)


def test_the_definition_of_a_name_used_at_the_cursor_becomes_context(workspace):
    repo = collector(workspace)
    assert repo.definitions.wait()
    chunks = request(repo, workspace)
    assert [(c.path, c.start_line, c.end_line) for c in chunks] == [("pkg/util.py", 6, 9)]
    assert chunks[0].text.startswith("def compute_checksum(payload, seed=0):")
    # a name the document defines itself is not looked up elsewhere, even unsaved
    own = MAIN + "\n\ndef compute_checksum(data):\n    return 0\n"
    repo.ring_focus = None
    assert request(repo, workspace, own) == ()
    # an ignored file's definition never comes, whatever uses its name
    secret = "from secret_tokens import load_secret_token\n\ntoken = load_secret_token()\nsend(token)\n"
    assert request(repo, workspace, secret, "use_secret.py") == ()
    repo.definitions.close()


def test_names_the_document_uses_far_from_the_cursor_bring_their_definitions_after_those_near_it(workspace):
    """As train/repo.py builds the context the model learns from: the definitions of the names the
    document uses, most used first, also when the cursor is far from every use (a hole at such a
    name hides the one use near the cursor), ranked behind those of the names around the cursor."""
    repo = collector(workspace)
    assert repo.definitions.wait()
    filler = "".join(f"def step_{i}(value):\n    return value + {i}\n\n\n" for i in range(20))
    far = ("def sign(payload):\n    return compute_checksum(payload)\n\n\n"
           "def verify(payload, digest):\n    return compute_checksum(payload) == digest\n\n\n")
    near = "def flush(stream):\n    writer = PacketWriter(stream)\n    return "
    chunks = request(repo, workspace, far + filler + near)
    assert [c.text.splitlines()[0] for c in chunks] == ["def compute_checksum(payload, seed=0):",
                                                        "class PacketWriter:"]  # most relevant last
    repo.ring_focus = None
    assert len(request(repo, workspace, filler + near)) == 1  # no use of compute_checksum: not brought
    repo.definitions.close()


def test_a_name_being_typed_brings_the_definitions_it_may_complete_to(workspace):
    """`compute_ch|` on the cursor's line: nothing defines `compute_ch`, the index's names that
    start with it are looked up (a name the document uses elsewhere is not needed)."""
    repo = collector(workspace)
    assert repo.definitions.wait()
    text = "def receive_packet(socket):\n    payload = socket.recv(4096)\n    return compute_ch"
    chunks = request(repo, workspace, text)
    assert [c.path for c in chunks] == ["pkg/util.py"]
    assert chunks[0].text.startswith("def compute_checksum(payload, seed=0):")
    assert repo.definitions.completions("compute_").keys() == {"compute_checksum"}
    assert repo.definitions.completions("compute_checksum") == {}  # the name itself: lookup's job
    # two letters say too little: nothing is looked up
    repo.ring_focus = None
    assert request(repo, workspace, text[:-len("mpute_ch")]) == ()
    # with the cursor known, only the word right before it is a name being typed
    repo.ring_focus = None
    line = "    digest = compute_ch(payload)"
    typing = "def receive_packet(socket):\n" + line
    cursor = typing.index("(payload)")
    assert [c.path for c in request(repo, workspace, typing, offset=cursor)] == ["pkg/util.py"]
    repo.ring_focus = None
    assert request(repo, workspace, typing, offset=typing.index(" = ")) == ()  # after `digest`: no such name
    repo.definitions.close()


def test_common_and_ambiguous_names_are_not_looked_up(workspace):
    for i in range(repo_context.MAX_NAME_FILES + 1):
        (workspace / f"mod{i}.py").write_text("def compute_checksum(data):\n    return 0\n")
    (workspace / "common.py").write_text("def update(data):\n    return data\n")
    repo = collector(workspace)
    assert repo.definitions.wait()
    text = "def refresh(record):\n    update(record)\n    return compute_checksum(record)\n"
    assert request(repo, workspace, text) == ()
    repo.definitions.close()


def test_the_index_is_built_off_the_request_path(workspace, monkeypatch):
    """A walk that takes long (a stub parser blocked on an event) holds no request up: the request
    is answered at once without definitions, and they come with the next refresh."""
    release = threading.Event()
    real = definitions.definitions_of
    entered = threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(definitions, "definitions_of", slow)
    repo = collector(workspace)
    assert entered.wait(5) and repo.definitions.summary()["building"]
    started = time.perf_counter()
    assert request(repo, workspace) == ()
    assert time.perf_counter() - started < 0.5
    release.set()
    assert repo.definitions.wait()
    assert not repo.definitions.summary()["building"]
    assert repo.idle_refresh(lambda u: MAIN, lambda text, line: (0, line + 2))  # the index changed: ranked again
    line = MAIN.count("\n")
    chunks = repo.for_request(uri(workspace / "main.py"), MAIN, line, (0, line + 2), lambda u: MAIN)
    assert [c.path for c in chunks] == ["pkg/util.py"]
    repo.definitions.close()


# -- over stdio -----------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> None:
    if shutil.which("git"):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


async def test_a_function_in_a_file_never_opened_reaches_the_prompt(workspace):
    import asyncio

    from lsprotocol import types
    from lsp_harness import Editor

    _git(workspace, "init", "-q")
    main_uri = uri(workspace / "main.py")
    (workspace / "main.py").write_text(MAIN)
    editor = Editor()
    try:
        await editor.start(init_options={"repoContext": "on", "seed": 7, "candidates": 2, "steps": 2, "maxTokens": 8})
        editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder(uri(workspace), "ws")], removed=[])))
        editor.open(main_uri, MAIN)  # the only document open
        assert not (await editor.wait_ready())["engineError"]
        for _ in range(200):  # the walk runs on its own thread
            summary = (await editor.stats())["repoContext"].get("definitions", {})
            if summary.get("walks") and not summary["building"]:
                break
            await asyncio.sleep(0.05)
        assert summary["files"] == 3  # pkg/util.py, web/app.js, main.py
        line = MAIN.count("\n")
        await editor.complete(main_uri, line, len(MAIN.split("\n")[-1]), invoked=True)
        stats = await editor.stats()
        assert stats["lastContext"] == [{"path": "pkg/util.py", "startLine": 6, "endLine": 9}]
        assert stats["lastTimings"]["context_chunks"] == 1 and stats["lastTimings"]["context_tokens"] > 20
        assert stats["repoContext"]["files"] == 1  # the pool holds open documents only

        (workspace / "pkg" / "util.py").unlink()
        editor.client.workspace_did_delete_files(types.DeleteFilesParams(
            files=[types.FileDelete(uri=uri(workspace / "pkg" / "util.py"))]))
        for _ in range(100):
            if (files := (await editor.stats())["repoContext"]["definitions"]["files"]) == 2:
                break
            await asyncio.sleep(0.05)
        assert files == 2
        editor.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(main_uri)))
        other = "from pkg.util import compute_checksum\n\nvalue = compute_checksum(b'')\n"
        editor.open(uri(workspace / "other.py"), other)  # another document: ranked afresh, nothing found now
        await editor.complete(uri(workspace / "other.py"), 3, 0, invoked=True)
        assert (await editor.stats())["lastContext"] == []
    finally:
        await editor.close()


# -- files changed outside the editor (workspace/didChangeWatchedFiles) ----------------------------
def test_a_watchers_batch_is_one_task_read_from_the_disk(workspace, monkeypatch):
    index = built(workspace)
    batch = workspace / "batch"
    batch.mkdir()
    for i in range(20):
        (batch / f"mod{i}.py").write_text(f"def batch_function_{i}():\n    return {i}\n")
    (workspace / "secret_batch.py").write_text("def secret_batch_function():\n    return 1\n")  # ignored
    uris = [uri(batch / f"mod{i}.py") for i in range(20)] + [uri(workspace / "secret_batch.py")]
    release = threading.Event()
    index._submit(("call", lambda: release.wait(10)))  # the index's thread busy: the batch only waits its turn
    updates = index.stats["updates"]
    started = time.perf_counter()
    index.update_many(uris + uris)  # a watcher may report a file twice (created, then changed)
    assert time.perf_counter() - started < 0.05 and index.summary()["files"] == 2
    release.set()
    assert index.wait()
    assert index.stats["updates"] == updates + 21 and index.summary()["files"] == 22
    assert set(index.lookup(["batch_function_0", "batch_function_19", "secret_batch_function"])) == {
        "batch_function_0", "batch_function_19"}
    shutil.rmtree(batch)
    monkeypatch.setattr(definitions, "MAX_EVENT_FILES", 10)  # a larger batch (a git checkout): a walk
    walks = index.stats["walks"]
    index.update_many(uris)
    assert index.wait() and index.stats["walks"] == walks + 1 and index.summary()["files"] == 2
    index.close()


def test_watched_globs_cover_the_indexed_languages():
    code, gitignore = definitions.watched_globs()
    assert gitignore == "**/.gitignore" and code.startswith("**/*.{") and code.endswith("}")
    suffixes = code[len("**/*.{"):-1].split(",")
    assert {"py", "js", "jsx", "ts", "tsx"} <= set(suffixes)
    assert all(definitions.language_of("x." + suffix) for suffix in suffixes)


async def _definitions_once(editor, done, timeout: float = 20.0) -> dict:
    """infill/stats' repoContext.definitions once `done(it)` holds (the last one seen on timeout)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        summary = (await editor.stats())["repoContext"].get("definitions", {})
        if done(summary) or time.monotonic() > deadline:
            return summary
        await asyncio.sleep(0.05)


async def _until(predicate, timeout: float = 10.0) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _started(editor, workspace: Path, walked: bool = True, **start) -> dict:
    """The server started on `workspace`, main.py open, its first walk done (`walked`)."""
    from lsprotocol import types

    _git(workspace, "init", "-q")
    (workspace / "main.py").write_text(MAIN)
    await editor.start(stub=["x"], **start)
    editor.client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
        event=types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder(uri(workspace), "ws")], removed=[])))
    editor.open(uri(workspace / "main.py"), MAIN)
    return await _definitions_once(editor, lambda s: not walked or (s.get("walks") and not s["building"]))


def _events(editor, *changes: tuple[Path, int]) -> None:
    from lsprotocol import types

    editor.client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        changes=[types.FileEvent(uri=uri(path), type=types.FileChangeType(kind)) for path, kind in changes]))


CREATED, CHANGED, DELETED = 1, 2, 3


async def test_files_changed_outside_the_editor_reach_the_index_through_the_clients_watcher(workspace):
    from lsp_harness import Editor

    editor = Editor()
    try:
        first = await _started(editor, workspace, watch_files=True, init_options={"repoContext": "on"})
        assert first["files"] == 3  # pkg/util.py, web/app.js, main.py
        assert await _until(lambda: editor.registrations)
        (registration,) = editor.registrations
        assert registration["register"] == "workspace/didChangeWatchedFiles"
        assert [w["globPattern"] for w in registration["options"]["watchers"]] == list(definitions.watched_globs())

        extra = workspace / "pkg" / "extra.py"  # written by another program: the editor never opened it
        extra.write_text("def extra_helper(x):\n    return x\n\n\nclass ExtraModel:\n    pass\n")
        _events(editor, (extra, CREATED))
        found = await _definitions_once(editor, lambda s: s["files"] == 4)
        assert found["files"] == 4 and found["definitions"] == first["definitions"] + 2

        (workspace / "secret_new.py").write_text("def load_new_secret():\n    return 1\n")  # .gitignore'd
        (workspace / "generated" / "more.py").write_text("def generated_more():\n    return 1\n")  # ignored dir
        (workspace / ".git" / "hook.py").write_text("def git_hook():\n    return 1\n")
        _events(editor, (workspace / "secret_new.py", CREATED), (workspace / "generated" / "more.py", CREATED),
                (workspace / ".git" / "hook.py", CHANGED))
        ignored = await _definitions_once(editor, lambda s: s["updates"] >= found["updates"] + 3)
        assert ignored["updates"] == found["updates"] + 3  # read, and left out
        assert (ignored["files"], ignored["definitions"]) == (4, found["definitions"])

        extra.unlink()
        _events(editor, (extra, DELETED))
        gone = await _definitions_once(editor, lambda s: s["files"] == 3)
        assert (gone["files"], gone["definitions"]) == (3, first["definitions"])

        many = workspace / "web" / "gen"  # a git checkout: 500 files in one batch, the event loop not held
        many.mkdir()
        for i in range(500):
            (many / f"part{i}.js").write_text(f"export function part{i}() {{\n  return {i};\n}}\n")
        _events(editor, *((many / f"part{i}.js", CREATED) for i in range(500)))
        started = time.perf_counter()
        await editor.stats()
        assert time.perf_counter() - started < 5.0  # answered while the index works through them
        batch = await _definitions_once(editor, lambda s: s["files"] == 503 and not s["building"], timeout=60)
        assert batch["files"] == 503 and batch["definitions"] == first["definitions"] + 500

        (workspace / ".gitignore").write_text("secret_*.py\ngenerated/\nweb/\n")  # by git, say: walked again
        _events(editor, (workspace / ".gitignore", CHANGED))
        walked = await _definitions_once(editor, lambda s: s["walks"] > batch["walks"] and not s["building"])
        assert walked["files"] == 2  # pkg/util.py, main.py: nothing under web/ any more
    finally:
        await editor.close()


async def test_no_watcher_without_the_capability_or_without_the_index(workspace):
    from lsprotocol import types
    from lsp_harness import Editor

    editor = Editor()  # a client that cannot register it (Neovim on Linux by default)
    try:
        first = await _started(editor, workspace, watch_files=False, init_options={"repoContext": "on"})
        assert first["files"] == 3
        extra = workspace / "pkg" / "extra.py"
        extra.write_text("def extra_helper(x):\n    return x\n")
        editor.client.text_document_did_save(types.DidSaveTextDocumentParams(
            types.TextDocumentIdentifier(uri(workspace / "main.py"))))  # a round trip after the walk
        await editor.stats()
        assert editor.registrations == []
    finally:
        await editor.close()

    editor = Editor()  # a client that can, while repository context is off, then on, then off again
    try:
        off = await _started(editor, workspace, walked=False, watch_files=True, init_options={"repoContext": "off"})
        assert off["walks"] == 0 and editor.registrations == []
        editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"repoContext": "on"}))
        editor.client.text_document_did_save(types.DidSaveTextDocumentParams(
            types.TextDocumentIdentifier(uri(workspace / "main.py"))))
        assert await _until(lambda: editor.registrations)
        assert [r.get("register") for r in editor.registrations] == ["workspace/didChangeWatchedFiles"]
        on = await _definitions_once(editor, lambda s: s.get("walks") and not s["building"])
        assert on["files"] == 4  # extra.py, written while nothing watched, found by the walk
        editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"repoContext": "off"}))
        assert await _until(lambda: len(editor.registrations) == 2)
        assert editor.registrations[1] == {"unregister": "workspace/didChangeWatchedFiles",
                                           "id": editor.registrations[0]["id"]}
    finally:
        await editor.close()
