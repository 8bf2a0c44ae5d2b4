import assert from "node:assert/strict";
import test from "node:test";
import {
  advance,
  DEFAULTS,
  didPartiallyAcceptParams,
  didShowParams,
  findExecutable,
  itemId,
  missingServerMessage,
  partialAcceptance,
  partialAcceptanceOf,
  printable,
  printableInsert,
  serverSettings,
  statusView,
  exitReason,
  afterExit,
  stderrLevel,
  stoppedMessage,
  remember,
  MAX_RESTARTS,
  RESTART_WINDOW_MS,
  typingThrough,
  answerAt,
  askAgain,
  doctorArgs,
  healthLines,
  markdownText,
  statusTooltip,
  versionMismatch,
} from "../logic";

test("settings map to the server's camelCase keys", () => {
  const out = serverSettings({ ...DEFAULTS, candidates: 6, maxTokens: 48, steps: 8, languages: { markdown: false } });
  assert.deepEqual(out, {
    candidates: 6,
    invokedCandidates: 8,
    maxTokens: 48,
    steps: 8,
    invokedSteps: 24,
    languages: { markdown: false },
    showInvalid: false,
  });
  const remote = serverSettings({ ...DEFAULTS, engineAddress: "/run/e.sock", model: "m", candidates: 12 });
  assert.equal(remote.engineAddress, "/run/e.sock");
  assert.equal(remote.model, "m");
  assert.equal(remote.invokedCandidates, 12);
  assert.equal(remote.seed, undefined); // null: fresh noise, the server's default
  assert.equal(serverSettings({ ...DEFAULTS, seed: 0 }).seed, 0);
});

test("status bar text, tooltip and click per state", () => {
  assert.deepEqual(statusView("idle", true), { text: "$(sparkle) infill", tooltip: "infill-lsp: ready", command: "infill.toggle" });
  assert.match(statusView("busy", true).text, /spin/);
  assert.equal(statusView("error", true, "infill-lsp: error: no model").tooltip, "infill-lsp: error: no model (click to show the log)");
  assert.equal(statusView("error", true, "exit code 2").tooltip, "infill-lsp: error: exit code 2 (click to show the log)");
  assert.equal(statusView("loading", true, undefined, 40).text, "$(loading~spin) infill: loading 40%");
  assert.deepEqual(statusView("busy", false), { text: "$(circle-slash) infill", tooltip: "infill-lsp: disabled", command: "infill.toggle" });
  const error = statusView("error", true, "engine unreachable");
  assert.deepEqual(error, {
    text: "$(error) infill",
    tooltip: "infill-lsp: error: engine unreachable (click to show the log)",
    command: "infill.showLog",
  });
  assert.deepEqual(statusView("error", false, "engine unreachable"), error); // an error shows through "off"
});

// What `infill-lsp serve --stdio` wrote before this version accepted --stdio, and exited with 2.
const ARGPARSE_EXIT = [
  "usage: infill-lsp [-h] [--version] [--log-level LOG_LEVEL]",
  "                  {serve,engine,complete,bench,train,eval} ...",
  "infill-lsp: error: unrecognized arguments: --stdio",
];

test("the server exited: the status bar turns to an error with the reason, and a click shows the log", () => {
  const stderr: string[] = [];
  for (const line of ["2025-01-01 10:00:00,000 INFO infill_lsp.lsp.server: starting", ...ARGPARSE_EXIT]) remember(stderr, line);
  const reason = exitReason(stderr);
  assert.equal(reason, "infill-lsp: error: unrecognized arguments: --stdio");
  assert.equal(stoppedMessage(reason!), "infill-lsp stopped: infill-lsp: error: unrecognized arguments: --stdio");
  const view = statusView("error", true, reason);
  assert.equal(view.text, "$(error) infill");
  assert.match(view.tooltip, /unrecognized arguments: --stdio/);
  assert.equal(view.command, "infill.showLog");
  // it never came up: starting it again would fail the same way
  assert.deepEqual(afterExit([], 1000, false), { restart: false, exits: [1000] });
});

test("why the server stopped, from its stderr", () => {
  const traceback = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ModuleNotFoundError: No module named 'torch'"];
  assert.equal(exitReason(traceback), "ModuleNotFoundError: No module named 'torch'");
  assert.equal(exitReason(["2025-01-01 10:00:00,000 ERROR infill_lsp.engine: out of memory", "2025-01-01 INFO x: bye"]),
    "2025-01-01 10:00:00,000 ERROR infill_lsp.engine: out of memory");
  assert.equal(exitReason(["2025-01-01 10:00:00,000 INFO infill_lsp: loading 40%"]), undefined); // killed: no reason given
  assert.equal(exitReason([]), undefined);
  assert.equal(exitReason(["x".repeat(400) + " error"])!.length, 300);
  const tail: string[] = [];
  for (let i = 0; i < 100; i++) remember(tail, `line ${i}`);
  assert.deepEqual([tail.length, tail[0], tail[39]], [40, "line 60", "line 99"]);
  assert.equal(stderrLevel("2025-01-01 10:00:00,000 WARNING infill_lsp.lsp: slow"), "warn");
  assert.equal(stderrLevel("2025-01-01 10:00:00,000 INFO infill_lsp.lsp: ready"), "info");
  assert.equal(stderrLevel(ARGPARSE_EXIT[2]), "error");
});

test("a server that stopped after it came up is restarted, a few times", () => {
  let exits: number[] = [];
  const now = 10 * RESTART_WINDOW_MS;
  for (let i = 0; i < MAX_RESTARTS; i++) {
    const decision = afterExit(exits, now + i * 1000, true);
    assert.equal(decision.restart, true, `exit ${i + 1}`);
    exits = decision.exits;
  }
  assert.equal(afterExit(exits, now + 5000, true).restart, false); // crashing over and over: stop
  assert.equal(afterExit(exits, now + RESTART_WINDOW_MS + 3000, true).restart, true); // the old ones are forgotten
});

test("a missing server says how to install it", () => {
  const message = missingServerMessage("/opt/nothing/infill-lsp");
  assert.match(message, /\/opt\/nothing\/infill-lsp/);
  assert.match(message, /pip install infill-lsp/);
  assert.match(message, /scripts\/setup/);
  assert.match(message, /infill\.serverPath/);
});

test("telemetry payloads", () => {
  assert.equal(itemId({ arguments: [{ id: "3.1" }] }), "3.1");
  assert.equal(itemId({ arguments: [] }), undefined);
  assert.equal(itemId(undefined), undefined);
  assert.deepEqual(didShowParams("3.1"), { id: "3.1" });
  assert.deepEqual(didPartiallyAcceptParams("3.1", 4.7), { id: "3.1", acceptedLength: 4 });
  assert.deepEqual(didPartiallyAcceptParams("3.1", -2), { id: "3.1", acceptedLength: 0 });
});

test("partial acceptance is a multi-character insertion that begins the shown suggestion", () => {
  const shown = { uri: "file:///a.py", line: 3, character: 8, text: "total += value\n    return total", id: "1.0" };
  const at = { uri: "file:///a.py", line: 3, character: 8, rangeLength: 0 };
  assert.equal(partialAcceptance(shown, { ...at, text: "total " }), 6); // accept word
  assert.equal(partialAcceptance(shown, { ...at, text: "total += value\n" }), 15); // accept line
  assert.equal(partialAcceptance(shown, { ...at, text: "t" }), undefined); // typing
  assert.equal(partialAcceptance(shown, { ...at, text: "tota1" }), undefined); // not the suggestion
  assert.equal(partialAcceptance(shown, { ...at, text: shown.text }), undefined); // full accept: the command
  assert.equal(partialAcceptance(shown, { ...at, character: 9, text: "otal" }), undefined); // elsewhere
  assert.equal(partialAcceptance(undefined, { ...at, text: "total" }), undefined);
  const rest = advance(shown, "total += value\n");
  assert.deepEqual([rest.line, rest.character, rest.text], [4, 0, "    return total"]);
  const word = advance(shown, "total ");
  assert.deepEqual([word.line, word.character, word.text], [3, 14, "+= value\n    return total"]);
  // in a CRLF document VS Code inserts the accepted line with "\r\n": the same piece of the suggestion
  assert.equal(partialAcceptance(shown, { ...at, text: "total += value\r\n" }), 15);
  const crlf = advance(shown, "total += value\r\n");
  assert.deepEqual([crlf.line, crlf.character, crlf.text], [4, 0, "    return total"]);
});

test("a partial acceptance is credited to the candidate it begins, whichever one was on screen", () => {
  const at = { uri: "file:///a.py", line: 3, character: 8, rangeLength: 0 };
  const first = { ...at, text: "total += value", id: "1.0" };
  const second = { ...at, text: "count = 0\n", id: "1.1" };
  assert.deepEqual(partialAcceptanceOf([first, second], { ...at, text: "count " }), { index: 1, length: 6 });
  assert.deepEqual(partialAcceptanceOf([first, second], { ...at, text: "total " }), { index: 0, length: 6 });
  const alike = { ...at, text: "total = 1", id: "1.2" };
  assert.deepEqual(partialAcceptanceOf([first, alike], { ...at, text: "total " }), { index: 0, length: 6 });
  assert.equal(partialAcceptanceOf([first, second], { ...at, text: "other " }), undefined);
  assert.equal(partialAcceptanceOf([], { ...at, text: "total " }), undefined);
});

test("the server executable is looked up like a shell would", () => {
  const files = new Set(["/venv/bin/infill-lsp", "/usr/bin/python3", "C:\\Py\\Scripts\\infill-lsp.EXE"]);
  const exists = (f: string) => files.has(f);
  assert.equal(findExecutable("infill-lsp", { PATH: "/usr/bin:/venv/bin" }, exists, "linux"), "/venv/bin/infill-lsp");
  assert.equal(findExecutable("infill-lsp", { PATH: "/usr/bin" }, exists, "linux"), undefined);
  assert.equal(findExecutable("/venv/bin/infill-lsp", {}, exists, "linux"), "/venv/bin/infill-lsp");
  assert.equal(findExecutable("/elsewhere/infill-lsp", { PATH: "/venv/bin" }, exists, "linux"), undefined);
  assert.equal(findExecutable("infill-lsp", {}, exists, "linux"), undefined);
  assert.equal(findExecutable("infill-lsp", { Path: "C:\\Windows;C:\\Py\\Scripts", PATHEXT: ".COM;.EXE" }, exists, "win32"),
    "C:\\Py\\Scripts\\infill-lsp.EXE");
  assert.equal(findExecutable("C:\\Py\\Scripts\\infill-lsp", {}, exists, "win32"), "C:\\Py\\Scripts\\infill-lsp.EXE");
});

test("typing through the last answer is answered without the server", () => {
  const text = "def f():\n    x = )\n    return x\n";
  const offset = text.indexOf("x = )") + 4;
  const answer = answerAt("file:///a.py", text, offset, ["foo(1))", "fob)", "bar)"]);
  assert.equal(answer.rest, ")");
  const typing = (typed: string, extra = {}) => ({
    uri: "file:///a.py",
    text: text.slice(0, offset) + typed + text.slice(offset),
    offset: offset + typed.length,
    ...extra,
  });
  assert.deepEqual(typingThrough(answer, typing("f")), [0, 1]);
  assert.deepEqual(typingThrough(answer, typing("foo")), [0]);
  assert.deepEqual(typingThrough(answer, typing("")), [0, 1, 2]); // nothing typed yet
  assert.equal(typingThrough(answer, typing("foo(1)")), undefined); // all of it typed
  assert.equal(typingThrough(answer, typing("q")), undefined); // not what it suggests
  assert.equal(typingThrough(answer, typing("f\n")), undefined);
  assert.equal(typingThrough(answer, { ...typing("f"), text: typing("f").text.replace("return", "yield") }), undefined); // edited below
  assert.equal(typingThrough(answer, { ...typing("f"), text: typing("f").text.replace("def", "async def") }), undefined); // edited above
  assert.equal(typingThrough(answer, { uri: "file:///a.py", text: text.replace("x = )", "x =)"), offset: offset - 1 }), undefined);
  assert.equal(typingThrough(answer, typing("f", { uri: "file:///b.py" })), undefined);
  assert.equal(typingThrough(undefined, typing("f")), undefined);
  const endOfFile = answerAt("file:///c.txt", "ab", 2, ["cde"]);
  assert.equal(endOfFile.rest, "");
  assert.deepEqual(typingThrough(endOfFile, { uri: "file:///c.txt", text: "abcd", offset: 4 }), [0]);
  assert.equal(answerAt("u", "a = \r\nb", 4, []).rest, "");
});

test("control characters never reach the screen: taken out of what an item adds, not out of the document", () => {
  assert.equal(printable("a\u0000b\u001b[31mc\r\n\td\u007fe\u0085f\u00a0é😀"), "ab[31mc\n\tdef\u00a0é😀");
  // insertText = typed part + middle + rest of the line; the document's own form feed stays
  assert.equal(printableInsert("x = a\u0000b\f)", "x = ", "\f)"), "x = ab\f)");
  assert.equal(printableInsert("a\r\nb\f)", "", "\f)"), "a\nb\f)");
  // it does not repeat the rest of the line (it replaces it): all of it is new text
  assert.equal(printableInsert("a\u0007b", "", "\f)"), "ab");
  assert.equal(printableInsert("\u0007\u0008)", "", ")"), undefined); // nothing left to add: dropped
  assert.equal(printableInsert(")", "", ")"), ")"); // it added nothing to begin with: the server's business
});

test("health checks become output lines at their level, each fix on its own line", () => {
  const lines = healthLines([
    { name: "model", state: "ok", detail: "tiny at /m", fix: "" },
    { name: "real model", state: "warn", detail: "not cached", fix: "hf download x" },
    { name: "engine", state: "fail", detail: "/s: refused", fix: "start it" },
  ]);
  assert.deepEqual(lines, [
    { level: "info", text: "ok   model: tiny at /m" },
    { level: "warn", text: "warn real model: not cached" },
    { level: "warn", text: "     fix: hf download x" },
    { level: "error", text: "FAIL engine: /s: refused" },
    { level: "error", text: "     fix: start it" },
  ]);
  // an answer that is not a list of checks (an older server's null) is said as such
  assert.deepEqual(healthLines(null), [{ level: "error", text: "health: not a list of checks: null" }]);
});

test("doctor's arguments: serve replaced, transport flags dropped, the settings' model and engine added", () => {
  const none = { model: "", engineAddress: "" };
  assert.deepEqual(doctorArgs(["serve"], none), ["doctor", "--json"]);
  assert.deepEqual(doctorArgs(["--log-level", "WARNING", "serve", "--model", "/m", "--stdio"], none), [
    "--log-level", "WARNING", "doctor", "--json", "--model", "/m",
  ]);
  assert.deepEqual(doctorArgs(["serve", "--tcp", "h:1", "--tcp=h:2"], { model: "m", engineAddress: "/e.sock" }), [
    "doctor", "--json", "--model", "m", "--engine", "/e.sock",
  ]);
  assert.deepEqual(doctorArgs(["serve", "--model", "/a"], { model: "/b", engineAddress: "" }), ["doctor", "--json", "--model", "/a"]);
  assert.equal(doctorArgs(["engine"], none), undefined);
});

test("a server of another version is pointed out; the same or an unknown version is not", () => {
  assert.equal(versionMismatch("0.1.0", "0.1.0"), undefined);
  assert.equal(versionMismatch("0.1.0", undefined), undefined);
  const message = versionMismatch("0.1.0", "0.2.0")!;
  assert.match(message, /server is version 0\.2\.0 but this extension is 0\.1\.0/);
  assert.match(message, /pip install -U infill-lsp/);
});

test("the suggestion asked for while loading is asked again once ready, only where it was asked", () => {
  const asked = { uri: "file:///a", version: 3, line: 1, character: 4, items: 0 };
  const here = { uri: "file:///a", version: 3, line: 1, character: 4 };
  assert.equal(askAgain("loading", "idle", asked, here, true), true);
  assert.equal(askAgain("busy", "idle", asked, here, true), false); // not the end of a load
  assert.equal(askAgain("loading", "error", asked, here, true), false);
  assert.equal(askAgain("loading", "idle", { ...asked, items: 2 }, here, true), false); // it got an answer
  assert.equal(askAgain("loading", "idle", asked, { ...here, version: 4 }, true), false); // typed since
  assert.equal(askAgain("loading", "idle", asked, { ...here, character: 5 }, true), false); // moved
  assert.equal(askAgain("loading", "idle", asked, { ...here, uri: "file:///b" }, true), false); // another file
  assert.equal(askAgain("loading", "idle", asked, undefined, true), false); // no editor
  assert.equal(askAgain("loading", "idle", undefined, here, true), false); // nothing asked
  assert.equal(askAgain("loading", "idle", asked, here, false), false); // suggestions off
});

test("the status bar tooltip: the state as text, then links to health, log, toggle, restart", () => {
  assert.equal(markdownText("a_b [c](d) *e* `f` #1 - x!"), "a\\_b \\[c\\]\\(d\\) \\*e\\* \\`f\\` \\#1 \\- x\\!");
  const tooltip = statusTooltip("infill-lsp: error: boom (click to show the log)");
  const [state, links] = tooltip.split("\n\n");
  assert.equal(state.replace(/\\(.)/g, "$1"), "infill-lsp: error: boom (click to show the log)");
  for (const command of ["infill.showHealth", "infill.showLog", "infill.toggle", "infill.restartServer"]) {
    assert.ok(links.includes(`(command:${command})`), command);
  }
});
