// The extension itself (out/extension.js with the real vscode-languageclient) activated in a fake
// editor (./fake-vscode) against the real server: the provider VS Code would call, the commands it
// registers, the status bar, settings changes, telemetry as the server counts it.
/* eslint-disable @typescript-eslint/no-explicit-any */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import test from "node:test";

// `vscode` resolves to the fake; names it lacks become inert classes (instanceof stays false).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const Module = require("node:module");
const fakeModule = require("./fake-vscode");
const stand = new Proxy(fakeModule, {
  get(target, name) {
    if (name in target) return target[name];
    if (typeof name === "string" && /^[A-Z]/.test(name)) {
      const inert = class {};
      target[name] = inert;
      return inert;
    }
    return undefined;
  },
});
const load = Module._load;
Module._load = function (request: string, ...rest: any[]) {
  return request === "vscode" ? stand : load.call(this, request, ...rest);
};

import * as vscode from "./fake-vscode";
const { fake } = vscode;

const root = path.resolve(__dirname, "../../../..");
const server = process.env.INFILL_LSP_SERVER ?? path.join(root, ".venv/bin/infill-lsp");
const model = path.join(root, "fixtures/tiny-diffusiongemma");
const skip = !fs.existsSync(server) && `no server at ${server} (run scripts/setup)`;

const extension = require("../extension");

function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 120_000): Promise<T> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const poll = async () => {
      const value = await fn();
      if (value) return resolve(value);
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 50);
    };
    void poll();
  });
}

const token = new vscode.CancellationTokenSource().token;

function provide(document: vscode.TextDocument, position: vscode.Position, triggerKind: vscode.InlineCompletionTriggerKind,
                 selectedCompletionInfo?: { range: vscode.Range; text: string }) {
  const provider = fake.inlineProviders.find((p) => vscode.languages.match(p.selector, document as any))?.provider;
  assert.ok(provider, "an inline completion provider for the document");
  return provider.provideInlineCompletionItems(document, position, { triggerKind, selectedCompletionInfo }, token);
}

function stats(): Promise<any> {
  return vscode.commands.executeCommand("infill.showStats");
}

function statusBar(): any {
  return fake.statusBarItems[fake.statusBarItems.length - 1];
}

/** The status bar item's tooltip as text: its first paragraph (the state), Markdown escapes undone. */
function tooltipText(): string {
  const tooltip = statusBar().tooltip;
  assert.ok(tooltip instanceof vscode.MarkdownString, "a Markdown tooltip (with links)");
  assert.ok(tooltip.value.includes("(command:infill.showHealth)"), "the tooltip links to the health checks");
  return tooltip.value.split("\n\n")[0].replace(/\\(.)/g, "$1");
}

test("the extension in a (fake) editor against the real server", { skip }, async (t) => {
  Object.assign(fake.settings, {
    "infill.serverPath": server,
    "infill.serverArgs": ["--log-level", "WARNING", "serve", "--model", model],
    "infill.candidates": 2,
    "infill.maxTokens": 4,
    "infill.steps": 2,
    "infill.seed": 0, // reproducible suggestions: the preconditions below hold on every run
  });
  const context = { subscriptions: [] as { dispose(): any }[] };
  await extension.activate(context);
  try {
    for (const id of ["infill.toggle", "infill.restartServer", "infill.showLog", "infill.showStats", "infill.showHealth"]) {
      assert.ok(fake.commands.has(id), id);
    }
    assert.ok(statusBar().visible);
    await until("the model", async () => (await stats())?.engineReady);
    await until("an idle status bar", () => statusBar().text === "$(sparkle) infill");
    assert.ok(statusBar().texts.some((t: string) => t.startsWith("$(loading~spin) infill: loading")), statusBar().texts.join(" | "));
    // vscode-languageclient registers the server's command, so VS Code can run it on accept.
    assert.ok(fake.commands.has("infill.accept"));
    // the server is this extension's version: nothing to report
    assert.deepEqual(fake.messages.filter((m) => m.level === "warning"), []);

    await t.test("Infill: Show Health: the server's checks in the output channel", async () => {
      const logged = fake.log.length;
      const checks: any[] = await vscode.commands.executeCommand("infill.showHealth");
      const names = checks.map((c) => c.name);
      assert.deepEqual(names.slice(0, 2), ["infill-lsp", "server"]);
      for (const name of ["device", "model", "engine", "grammars"]) assert.ok(names.includes(name), name);
      assert.ok(!checks.some((c) => c.state === "fail"), JSON.stringify(checks));
      const lines = fake.log.slice(logged);
      assert.ok(lines.some((l) => /^\[infill-lsp\] info health: extension \d+\.\d+\.\d+, server \d+\.\d+\.\d+$/.test(l)), lines.join("\n"));
      assert.ok(lines.some((l) => l.startsWith("[infill-lsp] info ok   server: serving ")), lines.join("\n"));
      assert.ok(lines.some((l) => l.startsWith("[infill-lsp] info ok   model: ")), lines.join("\n"));
    });

    const document = new vscode.TextDocument(vscode.Uri.file("/tmp/infill-vscode-test.txt"), "plaintext", "total = ()\n");
    fake.documents.push(document);
    fake.onDidOpenTextDocument.fire(document);
    const at = new vscode.Position(0, 9);

    await t.test("Invoked: every candidate, with the accept command", async () => {
      const texts = statusBar().texts.length;
      const list = await provide(document, at, vscode.InlineCompletionTriggerKind.Invoke);
      assert.ok(statusBar().texts.slice(texts).includes("$(sync~spin) infill"), "thinking while the model runs");
      // invoked: invokedCandidates = max(candidates, 8) rows, those that pass validation (all: plain text)
      assert.ok(list.items.length >= 1 && list.items.length <= 8, `${list.items.length} items`);
      for (const item of list.items) {
        assert.equal(typeof item.insertText, "string");
        assert.ok(item.insertText.endsWith(")"), "insertText = middle + the rest of the line");
        assert.doesNotMatch(item.insertText, /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/, "no control characters");
        assert.deepEqual([item.range.start.line, item.range.start.character], [0, 9]);
        assert.equal(item.command.command, "infill.accept");
      }
      // the first item is the one on screen (a notification: it arrives in its own time)
      const before = await until("the shown report", async () => ((s) => s.shown === 1 && s)(await stats()), 10_000);
      // VS Code runs the item's command after inserting it
      await vscode.commands.executeCommand(list.items[0].command.command, ...list.items[0].command.arguments);
      const after = await stats();
      assert.equal(after.accepted, before.accepted + 1);
      // acceptedChars: UTF-16 code units of what went in (the middle; the rest of the line was there)
      const rest0 = document.lineAt(0).text.slice(9);
      const inserted: string = list.items[0].insertText.slice(0, list.items[0].insertText.length - rest0.length);
      assert.equal(after.acceptedChars - before.acceptedChars, inserted.length);
    });

    await t.test("Automatic, then typing through it: no new request", async () => {
      const list = await provide(document, at, vscode.InlineCompletionTriggerKind.Automatic);
      assert.ok(list.items.length >= 1);
      const first: string = list.items[0].insertText;
      const rest = document.lineAt(0).text.slice(9);
      const middle = first.slice(0, first.length - rest.length);
      assert.ok(middle.length >= 2, `a suggestion to type through: ${JSON.stringify(middle)}`);
      const requests = (await stats()).requests;
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(at, at), middle[0])); // the user types
      const next = await provide(document, new vscode.Position(0, 10), vscode.InlineCompletionTriggerKind.Automatic);
      assert.equal(next.items[0].insertText, first); // the same item, its range now over the typed character
      assert.deepEqual([next.items[0].range.start.character, next.items[0].range.end.character], [9, document.lineAt(0).text.length]);
      assert.equal((await stats()).requests, requests);
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(0, 9, 0, 10), "")); // and deletes it
    });

    await t.test("the completion menu open: the server is asked, its items extend the selected item", async () => {
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(at, at), "ab")); // "total = (ab)"
      const cursor = new vscode.Position(0, 11);
      const requests = (await stats()).requests;
      const selected = { range: new vscode.Range(at, cursor), text: "abs" }; // VS Code's selected item replaces "ab"
      const list = await provide(document, cursor, vscode.InlineCompletionTriggerKind.Automatic, selected);
      assert.equal((await stats()).requests, requests + 1); // not an answer typed through: the server completed "abs"
      assert.ok(list.items.length >= 1);
      for (const item of list.items) {
        assert.ok(item.insertText.startsWith("abs") && item.insertText.endsWith(")"), item.insertText);
        assert.deepEqual([item.range.start.character, item.range.end.character], [9, 12]); // the item's start to the line's end
      }
      // partial-accept telemetry follows what the item adds at the cursor: the selected item's rest, then the middle
      const added: string = list.items[0].insertText.slice(2, -1);
      assert.ok(added.length >= 2 && added.startsWith("s"), JSON.stringify(added));
      const before = await stats();
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(cursor, cursor), added.slice(0, 2)));
      await until("the partial accept", async () => (await stats()).partiallyAccepted === before.partiallyAccepted + 1, 10_000);
      assert.equal((await stats()).acceptedChars, before.acceptedChars + 2);
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(0, 9, 0, 13), ""));
      assert.equal(document.lineAt(0).text, "total = ()");
    });

    await t.test("accept word: a multi-character insertion of the shown suggestion", async () => {
      const list = await provide(document, at, vscode.InlineCompletionTriggerKind.Invoke);
      const rest = document.lineAt(0).text.slice(9);
      const middle: string = list.items[0].insertText.slice(0, list.items[0].insertText.length - rest.length);
      assert.ok(middle.length >= 3, `a suggestion long enough for a partial accept: ${JSON.stringify(middle)}`);
      const before = await stats();
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(at, at), middle.slice(0, 2)));
      await until("the partial accept", async () => (await stats()).partiallyAccepted === before.partiallyAccepted + 1, 10_000);
      assert.equal((await stats()).acceptedChars, before.acceptedChars + 2); // UTF-16 code units
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(0, 9, 0, 11), ""));
    });

    await t.test("toggle: no suggestions, status bar says off, the one on screen hidden", async () => {
      const hidden: number[] = [];
      fake.commands.set("editor.action.inlineSuggest.hide", () => hidden.push(Date.now()));
      assert.equal(await vscode.commands.executeCommand("infill.toggle"), false);
      assert.equal(statusBar().text, "$(circle-slash) infill");
      assert.equal(hidden.length, 1);
      fake.commands.delete("editor.action.inlineSuggest.hide");
      const requests = (await stats()).requests;
      assert.equal(await provide(document, at, vscode.InlineCompletionTriggerKind.Automatic), undefined);
      assert.equal((await stats()).requests, requests);
      assert.equal(await vscode.commands.executeCommand("infill.toggle"), true);
      assert.equal(statusBar().text, "$(sparkle) infill");
    });

    await t.test("a settings change reaches the server without a restart", async () => {
      const requests = (await stats()).requests;
      fake.settings["infill.steps"] = 3;
      fake.onDidChangeConfiguration.fire({ affectsConfiguration: (s: string) => s === "infill" || s === "infill.steps" });
      // Automatic, somewhere the last answer does not cover: the server runs the model
      const list = await provide(document, new vscode.Position(0, 8), vscode.InlineCompletionTriggerKind.Automatic);
      assert.ok(list.items.length >= 1);
      const after = await stats();
      assert.equal(after.requests, requests + 1); // the same server: its counters went on
      assert.ok(after.lastTimings.steps <= 3, JSON.stringify(after.lastTimings));
    });

    await t.test("restart: a new server, commands and listeners not doubled", async () => {
      await vscode.commands.executeCommand("infill.restartServer");
      await until("the model, again", async () => (await stats())?.engineReady);
      assert.equal((await stats()).requests, 0);
      fake.onDidOpenTextDocument.fire(document); // a fresh server learns the open documents again
      const list = await provide(document, at, vscode.InlineCompletionTriggerKind.Invoke);
      const rest = document.lineAt(0).text.slice(9);
      const middle: string = list.items[0].insertText.slice(0, list.items[0].insertText.length - rest.length);
      assert.ok(middle.length >= 3, `a suggestion long enough for a partial accept: ${JSON.stringify(middle)}`);
      // the new server numbers its items afresh: its first one is reported as shown all the same
      await until("the shown report", async () => (await stats()).shown === 1, 10_000);
      fake.onDidChangeTextDocument.fire(document.edit(new vscode.Range(at, at), middle.slice(0, 2)));
      await until("the partial accept", async () => (await stats()).partiallyAccepted >= 1, 10_000);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal((await stats()).partiallyAccepted, 1);
    });
    assert.deepEqual(fake.listenerErrors, []);
  } finally {
    await extension.deactivate();
    for (const d of context.subscriptions) d.dispose();
  }
});

test("a missing server: the status bar and a message with the install command", async () => {
  fake.commands.clear();
  fake.messages.length = 0;
  fake.settings["infill.serverPath"] = "/nonexistent/infill-lsp";
  const context = { subscriptions: [] as { dispose(): any }[] };
  await extension.activate(context);
  try {
    assert.equal(fake.messages.length, 1);
    assert.equal(fake.messages[0].level, "error");
    assert.match(fake.messages[0].text, /\/nonexistent\/infill-lsp/);
    assert.match(fake.messages[0].text, /pip install infill-lsp/);
    assert.deepEqual(fake.messages[0].items, ["Copy install command", "Open Settings"]);
    assert.equal(statusBar().text, "$(error) infill");
    assert.equal(tooltipText(), "infill-lsp: error: server not found (click to show the log)");
    assert.equal(statusBar().command, "infill.showLog");
    assert.equal(await vscode.commands.executeCommand("infill.showStats"), undefined);
    // health without a server: the missing server is the failed check
    const checks: any[] = await vscode.commands.executeCommand("infill.showHealth");
    assert.equal(checks[0].state, "fail");
    assert.match(checks[0].detail, /pip install infill-lsp/);
    assert.ok(fake.log.some((l) => l.startsWith("[infill-lsp] error FAIL server: ")));
  } finally {
    await extension.deactivate();
    for (const d of context.subscriptions) d.dispose();
  }
});

/** Activate against `serverPath` / `serverArgs`, run `check`, deactivate. */
async function withServer(serverPath: string, serverArgs: string[], check: () => Promise<void>): Promise<void> {
  fake.commands.clear();
  fake.messages.length = 0;
  // The documents of an earlier test went with its editor. (Left open in no visible editor, they
  // wait as pending didOpens in vscode-languageclient, and in this fake editor the didOpen of a
  // document opened later then never goes out.)
  fake.documents.length = 0;
  fake.settings["infill.serverPath"] = serverPath;
  fake.settings["infill.serverArgs"] = serverArgs;
  const context = { subscriptions: [] as { dispose(): any }[] };
  await extension.activate(context);
  try {
    await check();
  } finally {
    await extension.deactivate();
    for (const d of context.subscriptions) d.dispose();
  }
}

async function stoppedWith(reason: RegExp): Promise<void> {
  await until("an error in the status bar", () => statusBar().text === "$(error) infill", 20_000);
  assert.match(tooltipText(), reason);
  assert.match(tooltipText(), /click to show the log/);
  assert.equal(statusBar().command, "infill.showLog");
  await until("the message", () => fake.messages.length > 0, 5_000);
  assert.equal(fake.messages.length, 1, JSON.stringify(fake.messages));
  assert.equal(fake.messages[0].level, "error");
  assert.match(fake.messages[0].text, /^infill-lsp stopped: /);
  assert.match(fake.messages[0].text, reason);
  assert.deepEqual(fake.messages[0].items, ["Show log", "Restart server"]);
  assert.equal(await vscode.commands.executeCommand("infill.showStats"), undefined); // not running
}

/** A stand-in server: a node script the extension runs as `node <script> --stdio`. */
function standIn(source: string): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "infill-vscode-")), "server.js");
  fs.writeFileSync(file, source);
  return file;
}

// Rejects its arguments as argparse does (infill-lsp before it accepted --stdio).
const REJECTS_ARGUMENTS = `
console.error("usage: infill-lsp [-h] [--version] [--log-level LOG_LEVEL] ...");
console.error("infill-lsp: error: unrecognized arguments: " + process.argv.slice(2).join(" "));
process.exit(2);
`;

test("a server that exits at once: an error with its reason, never a permanent 'loading'", async () => {
  await withServer(process.execPath, [standIn(REJECTS_ARGUMENTS), "serve"], async () => {
    // `serve --stdio`: started as vscode-languageclient starts stdio servers (TransportKind.stdio)
    await stoppedWith(/infill-lsp: error: unrecognized arguments: serve --stdio\b/);
    assert.ok(fake.log.some((line) => line.endsWith("error infill-lsp: error: unrecognized arguments: serve --stdio")), fake.log.join("\n"));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(statusBar().text, "$(error) infill"); // and it stays so
  });
});

test("a server that cannot be started: an error that says why", async () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "infill-vscode-")), "infill-lsp");
  fs.writeFileSync(file, "#!/bin/sh\n", { mode: 0o644 });
  await withServer(file, ["serve"], async () => {
    await stoppedWith(/not executable/);
    assert.ok(fake.messages[0].text.includes(file));
  });
});

// Answers initialize, then crashes; every start is counted in $INFILL_STARTS.
const CRASHES_AFTER_START = `
const fs = require("fs");
fs.appendFileSync(process.env.INFILL_STARTS, process.argv.slice(2).join(" ") + "\\n");
let buffer = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\\r\\n\\r\\n");
    if (end < 0) return;
    const length = Number(/Content-Length: (\\d+)/i.exec(buffer.subarray(0, end).toString())[1]);
    if (buffer.length < end + 4 + length) return;
    const message = JSON.parse(buffer.subarray(end + 4, end + 4 + length).toString());
    buffer = buffer.subarray(end + 4 + length);
    if (message.method === "initialize") {
      const body = JSON.stringify({ jsonrpc: "2.0", id: message.id, result: { capabilities: {} } });
      process.stdout.write("Content-Length: " + Buffer.byteLength(body) + "\\r\\n\\r\\n" + body);
    } else if (message.method === "initialized") {
      console.error("RuntimeError: the model ran out of memory");
      process.exit(1);
    }
  }
});
`;

test("a server that crashes after it came up is restarted, then given up on with the reason", async () => {
  const starts = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "infill-vscode-")), "starts");
  process.env.INFILL_STARTS = starts;
  try {
    await withServer(process.execPath, [standIn(CRASHES_AFTER_START), "serve"], async () => {
      await stoppedWith(/RuntimeError: the model ran out of memory/);
      // the first start and MAX_RESTARTS (3) restarts, each `serve --stdio`
      assert.deepEqual(fs.readFileSync(starts, "utf8").split("\n").filter(Boolean), Array(4).fill("serve --stdio"));
      assert.ok(statusBar().texts.includes("$(loading~spin) infill: loading"));
    });
  } finally {
    delete process.env.INFILL_STARTS;
  }
});

// Answers inlineCompletion with control characters in the middle (the rest of the line after the
// cursor appended, as infill-lsp answers); a full-sync document store.
const ANSWERS_WITH_CONTROLS = `
const documents = new Map();
let buffer = Buffer.alloc(0);
const send = (message) => {
  const body = JSON.stringify({ jsonrpc: "2.0", ...message });
  process.stdout.write("Content-Length: " + Buffer.byteLength(body) + "\\r\\n\\r\\n" + body);
};
process.stdin.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\\r\\n\\r\\n");
    if (end < 0) return;
    const length = Number(/Content-Length: (\\d+)/i.exec(buffer.subarray(0, end).toString())[1]);
    if (buffer.length < end + 4 + length) return;
    const message = JSON.parse(buffer.subarray(end + 4, end + 4 + length).toString());
    buffer = buffer.subarray(end + 4 + length);
    const params = message.params;
    if (message.method === "initialize") {
      send({ id: message.id, result: { capabilities: { textDocumentSync: 1, inlineCompletionProvider: true } } });
    } else if (message.method === "textDocument/didOpen") {
      documents.set(params.textDocument.uri, params.textDocument.text);
    } else if (message.method === "textDocument/inlineCompletion") {
      const text = documents.get(params.textDocument.uri);
      if (text === undefined) {
        send({ id: message.id, error: { code: -32602, message: "unknown document " + params.textDocument.uri } });
        continue;
      }
      const line = text.split("\\n")[params.position.line];
      const rest = line.slice(params.position.character);
      const range = { start: params.position, end: { line: params.position.line, character: line.length } };
      const middles = ["a\\u0000b\\u001b[31mc\\r\\n\\td\\u007fe\\u0085f", "\\u0007\\u0008"];
      send({ id: message.id, result: { items: middles.map((middle) => ({ insertText: middle + rest, range })) } });
    } else if (message.method === "shutdown") {
      send({ id: message.id, result: null });
    } else if (message.method === "exit") {
      process.exit(0);
    } else if (message.id !== undefined && message.method) {
      send({ id: message.id, result: null });
    }
  }
});
`;

test("control characters in an answer are never shown or inserted; the document's own stay", async () => {
  await withServer(process.execPath, [standIn(ANSWERS_WITH_CONTROLS)], async () => {
    await until("the provider (the server came up)", () => fake.inlineProviders.length > 0, 20_000);
    const document = new vscode.TextDocument(vscode.Uri.file("/tmp/infill-controls.txt"), "plaintext", "call(\f)\n");
    fake.documents.push(document);
    fake.onDidOpenTextDocument.fire(document);
    const list = await provide(document, new vscode.Position(0, 5), vscode.InlineCompletionTriggerKind.Invoke);
    assert.deepEqual(list.items.map((item: any) => item.insertText), ["ab[31mc\n\tdef\f)"]); // the second: only controls
    assert.deepEqual([list.items[0].range.start.character, list.items[0].range.end.character], [5, 7]);
  });
});

// Like infill-lsp while its model loads (infill/status `loading`, empty answers), ready (`idle`)
// 300 ms after the first inlineCompletion; serverInfo says version 9.9.9. Every start is counted.
const LOADS_THEN_READY = `
const fs = require("fs");
fs.appendFileSync(process.env.INFILL_STARTS, "start\\n");
const documents = new Map();
let buffer = Buffer.alloc(0);
let ready = false;
let asked = 0;
const send = (message) => {
  const body = JSON.stringify({ jsonrpc: "2.0", ...message });
  process.stdout.write("Content-Length: " + Buffer.byteLength(body) + "\\r\\n\\r\\n" + body);
};
process.stdin.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\\r\\n\\r\\n");
    if (end < 0) return;
    const length = Number(/Content-Length: (\\d+)/i.exec(buffer.subarray(0, end).toString())[1]);
    if (buffer.length < end + 4 + length) return;
    const message = JSON.parse(buffer.subarray(end + 4, end + 4 + length).toString());
    buffer = buffer.subarray(end + 4 + length);
    const params = message.params;
    if (message.method === "initialize") {
      send({ id: message.id, result: { capabilities: { textDocumentSync: 1, inlineCompletionProvider: true },
                                       serverInfo: { name: "infill-lsp", version: "9.9.9" } } });
    } else if (message.method === "initialized") {
      send({ method: "infill/status", params: { state: "loading", percent: 0 } });
    } else if (message.method === "textDocument/didOpen") {
      documents.set(params.textDocument.uri, params.textDocument.text);
    } else if (message.method === "textDocument/inlineCompletion") {
      if (!ready) {
        send({ id: message.id, result: { items: [] } });
        if (++asked === 1) setTimeout(() => { ready = true; send({ method: "infill/status", params: { state: "idle" } }); }, 300);
        continue;
      }
      send({ id: message.id, result: { items: [{ insertText: "ready" }] } });
    } else if (message.method === "shutdown") {
      send({ id: message.id, result: null });
    } else if (message.method === "exit") {
      process.exit(0);
    } else if (message.id !== undefined && message.method) {
      send({ id: message.id, result: null });
    }
  }
});
`;

test("the first suggestion: asked again once the server is ready; another version: said once", async () => {
  const starts = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "infill-vscode-")), "starts");
  process.env.INFILL_STARTS = starts;
  const triggers: number[] = [];
  try {
    await withServer(process.execPath, [standIn(LOADS_THEN_READY)], async () => {
      fake.commands.set("editor.action.inlineSuggest.trigger", () => triggers.push(Date.now()));
      const document = new vscode.TextDocument(vscode.Uri.file("/tmp/infill-first.txt"), "plaintext", "value = \n");
      fake.documents.push(document);
      const at = new vscode.Position(0, 8);
      const editor = { document, selection: { active: at, anchor: at, isEmpty: true } };
      (vscode.window as any).activeTextEditor = editor;
      await until("the provider (the server came up)", () => fake.inlineProviders.length > 0, 20_000);
      fake.onDidOpenTextDocument.fire(document);
      await until("loading", () => statusBar().text.startsWith("$(loading~spin) infill: loading"), 10_000);

      // the version: one warning, and the same in the log
      await until("the version warning", () => fake.messages.length > 0, 5_000);
      assert.deepEqual(fake.messages.map((m) => m.level), ["warning"]);
      assert.match(fake.messages[0].text, /server is version 9\.9\.9 but this extension is \d+\.\d+\.\d+/);

      // typed while the model loads: nothing; ready: VS Code is asked to ask again, once
      const empty = await provide(document, at, vscode.InlineCompletionTriggerKind.Automatic);
      assert.equal((Array.isArray(empty) ? empty : empty.items).length, 0);
      await until("idle", () => statusBar().text === "$(sparkle) infill", 10_000);
      await until("the trigger", () => triggers.length > 0, 5_000);
      const list = await provide(document, at, vscode.InlineCompletionTriggerKind.Invoke);
      assert.equal(list.items[0].insertText, "ready");
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(triggers.length, 1);

      // a new server (a restart), and the user moves on before it is ready: not asked again,
      // and the version mismatch is not said again
      await vscode.commands.executeCommand("infill.restartServer");
      await until("the second start", () => fs.readFileSync(starts, "utf8").split("\n").filter(Boolean).length === 2, 20_000);
      await until("loading again", () => statusBar().text.startsWith("$(loading~spin) infill: loading"), 10_000);
      fake.onDidOpenTextDocument.fire(document);
      await provide(document, at, vscode.InlineCompletionTriggerKind.Automatic);
      const moved = new vscode.Position(0, 7);
      editor.selection = { active: moved, anchor: moved, isEmpty: true };
      await until("idle again", () => statusBar().text === "$(sparkle) infill", 10_000);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(triggers.length, 1);
      assert.equal(fake.messages.length, 1);
    });
  } finally {
    delete process.env.INFILL_STARTS;
    (vscode.window as any).activeTextEditor = undefined;
    fake.commands.delete("editor.action.inlineSuggest.trigger");
  }
});
