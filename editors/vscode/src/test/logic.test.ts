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
  serverSettings,
  statusText,
  statusTooltip,
  typingThrough,
  answerAt,
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

test("status bar text and tooltip per state", () => {
  assert.match(statusText("busy"), /spin/);
  assert.equal(statusText("loading", undefined, 40), "$(loading~spin) infill: loading 40%");
  assert.match(statusText("error"), /error/);
  assert.equal(statusTooltip("error", "engine unreachable"), "infill-lsp: error: engine unreachable");
  assert.equal(statusTooltip("idle"), "infill-lsp: ready");
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
