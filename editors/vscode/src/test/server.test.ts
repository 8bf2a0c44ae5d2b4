// The requests the extension sends, sent to the real server over stdio with the same
// JSON-RPC library vscode-languageclient uses.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import test from "node:test";
import * as rpc from "vscode-jsonrpc/node";
import { DEFAULTS, didPartiallyAcceptParams, didShowParams, itemId, serverSettings } from "../logic";

const root = path.resolve(__dirname, "../../../..");
const server = process.env.INFILL_LSP_SERVER ?? path.join(root, ".venv/bin/infill-lsp");
const model = path.join(root, "fixtures/tiny-diffusiongemma");

test("extension request shapes against the real server", { skip: !fs.existsSync(server) && `no server at ${server}` }, async () => {
  const proc = spawn(server, ["--log-level", "WARNING", "serve", "--model", model], { stdio: ["pipe", "pipe", "ignore"] });
  const connection = rpc.createMessageConnection(new rpc.StreamMessageReader(proc.stdout!), new rpc.StreamMessageWriter(proc.stdin!));
  const statuses: string[] = [];
  connection.onNotification("infill/status", (p: { state: string }) => {
    statuses.push(p.state);
  });
  connection.onNotification("window/logMessage", () => undefined);
  connection.onNotification("$/progress", () => undefined);
  connection.onRequest("window/workDoneProgress/create", () => null);
  connection.listen();
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  try {
    const init: any = await connection.sendRequest("initialize", {
      processId: process.pid,
      rootUri: null,
      capabilities: { window: { workDoneProgress: true } },
      initializationOptions: serverSettings({ ...DEFAULTS, candidates: 2, maxTokens: 4, steps: 2 }),
    });
    assert.ok(init.capabilities.inlineCompletionProvider !== undefined);
    // vscode-languageclient turns these into VS Code commands, which VS Code runs on accept
    assert.ok(init.capabilities.executeCommandProvider.commands.includes("infill.accept"));
    assert.notEqual(init.capabilities.textDocumentSync, 0);
    // the server's version is the extension's (a mismatch would be reported once)
    const extension = JSON.parse(fs.readFileSync(path.resolve(__dirname, "../../package.json"), "utf8"));
    assert.deepEqual(init.serverInfo, { name: "infill-lsp", version: extension.version });
    await connection.sendNotification("initialized", {});
    const uri = "file:///tmp/vscode-test.txt";
    await connection.sendNotification("textDocument/didOpen", {
      textDocument: { uri, languageId: "plaintext", version: 1, text: "value = (\n" },
    });
    let stats: any = {};
    for (let i = 0; i < 600 && !stats.engineReady; i++) {
      stats = await connection.sendRequest("infill/stats", {});
      if (!stats.engineReady) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(stats.engineReady, JSON.stringify(stats));

    // "Infill: Show Health" asks this: doctor's checks plus the server's own engine
    const checks: any[] = await connection.sendRequest("infill/health", {});
    assert.deepEqual(checks.slice(0, 2).map((c) => c.name), ["infill-lsp", "server"]);
    for (const check of checks) {
      assert.deepEqual(Object.keys(check).sort(), ["detail", "fix", "name", "state"]);
      assert.ok(["ok", "warn", "fail"].includes(check.state));
    }
    assert.equal(checks[1].state, "ok");
    assert.match(checks[1].detail, /^serving /);

    for (const triggerKind of [1, 2]) {
      const result: any = await connection.sendRequest("textDocument/inlineCompletion", {
        textDocument: { uri },
        position: { line: 0, character: 9 },
        context: { triggerKind },
      });
      assert.ok(Array.isArray(result.items) && result.items.length >= 1);
      for (const item of result.items) {
        assert.equal(typeof item.insertText, "string");
        assert.deepEqual(item.range.start, { line: 0, character: 9 });
        assert.equal(item.command.command, "infill.accept");
        assert.ok(itemId(item.command));
      }
      if (triggerKind === 1) {
        const first = result.items[0];
        const id = itemId(first.command)!;
        await connection.sendNotification("infill/didShowCompletion", didShowParams(id));
        await connection.sendNotification("infill/didPartiallyAcceptCompletion", didPartiallyAcceptParams(id, 2));
        await connection.sendRequest("workspace/executeCommand", { command: first.command.command, arguments: first.command.arguments });
      }
    }
    await connection.sendNotification("workspace/didChangeConfiguration", { settings: { infill: serverSettings({ ...DEFAULTS, steps: 3 }) } });
    stats = await connection.sendRequest("infill/stats", {});
    assert.equal(stats.shown, 1);
    assert.equal(stats.partiallyAccepted, 1);
    assert.equal(stats.accepted, 1);
    assert.ok(stats.requests >= 1);
    assert.ok(statuses.includes("loading") && statuses.includes("idle"));
    await connection.sendRequest("shutdown");
    await connection.sendNotification("exit");
    assert.equal(await exited, 0);
  } finally {
    connection.dispose();
    proc.kill();
  }
});
