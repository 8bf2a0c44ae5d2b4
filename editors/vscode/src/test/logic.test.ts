import assert from "node:assert/strict";
import test from "node:test";
import {
  advance,
  DEFAULTS,
  didPartiallyAcceptParams,
  didShowParams,
  itemId,
  missingServerMessage,
  partialAcceptance,
  serverSettings,
  statusText,
  statusTooltip,
} from "../logic";

test("settings map to the server's camelCase keys", () => {
  const out = serverSettings({ ...DEFAULTS, candidates: 6, maxTokens: 48, steps: 8, languages: { markdown: false } });
  assert.deepEqual(out, {
    candidates: 6,
    invokedCandidates: 8,
    maxTokens: 48,
    steps: 8,
    languages: { markdown: false },
    showInvalid: false,
  });
  const remote = serverSettings({ ...DEFAULTS, engineAddress: "/run/e.sock", model: "m", candidates: 12 });
  assert.equal(remote.engineAddress, "/run/e.sock");
  assert.equal(remote.model, "m");
  assert.equal(remote.invokedCandidates, 12);
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
