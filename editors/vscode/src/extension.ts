import * as fs from "fs";
import * as path from "path";
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, TransportKind } from "vscode-languageclient/node";
import {
  advance,
  DEFAULTS,
  didPartiallyAcceptParams,
  didShowParams,
  itemId,
  missingServerMessage,
  partialAcceptance,
  ServerState,
  serverSettings,
  Settings,
  Shown,
  statusText,
  statusTooltip,
} from "./logic";

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let enabled = true;
let shown: Shown | undefined;

function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration("infill");
  return {
    serverPath: c.get("serverPath", DEFAULTS.serverPath),
    serverArgs: c.get("serverArgs", DEFAULTS.serverArgs),
    candidates: c.get("candidates", DEFAULTS.candidates),
    maxTokens: c.get("maxTokens", DEFAULTS.maxTokens),
    steps: c.get("steps", DEFAULTS.steps),
    languages: c.get("languages", DEFAULTS.languages),
    engineAddress: c.get("engineAddress", DEFAULTS.engineAddress),
    model: c.get("model", DEFAULTS.model),
    showInvalid: c.get("showInvalid", DEFAULTS.showInvalid),
  };
}

function setState(state: ServerState, detail?: string, percent?: number): void {
  status.text = statusText(state, detail, percent);
  status.tooltip = statusTooltip(state, detail);
}

function found(executable: string): boolean {
  if (executable.includes(path.sep)) return fs.existsSync(executable);
  return (process.env.PATH ?? "").split(path.delimiter).some((dir) => fs.existsSync(path.join(dir, executable)));
}

async function start(context: vscode.ExtensionContext): Promise<void> {
  const settings = readSettings();
  if (!found(settings.serverPath)) {
    setState("error", "server not found");
    void vscode.window.showErrorMessage(missingServerMessage(settings.serverPath));
    return;
  }
  const serverOptions: ServerOptions = {
    command: settings.serverPath,
    args: settings.serverArgs,
    transport: TransportKind.stdio,
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(settings),
    outputChannel: output,
    middleware: {
      provideInlineCompletionItems: async (document, position, ctx, token, next) => {
        if (!enabled) return undefined;
        const result = await next(document, position, ctx, token);
        const items = Array.isArray(result) ? result : result?.items;
        const first = items?.[0];
        const id = itemId(first?.command);
        // VS Code's stable API does not report which item is shown; the first is shown first.
        if (id && client && first && typeof first.insertText === "string") {
          void client.sendNotification("infill/didShowCompletion", didShowParams(id));
          const start = first.range ? first.range.start : position;
          shown = { uri: document.uri.toString(), line: start.line, character: start.character, text: first.insertText, id };
        }
        return result;
      },
    },
  };
  client = new LanguageClient("infill", "infill-lsp", serverOptions, clientOptions);
  client.onNotification("infill/status", (params: { state: ServerState; message?: string; percent?: number }) =>
    setState(enabled ? params.state : "off", params.message, params.percent),
  );
  await client.start();
  context.subscriptions.push(
    vscode.workspace.onDidChangeTextDocument((event) => {
      for (const change of event.contentChanges) {
        const edit = {
          uri: event.document.uri.toString(),
          line: change.range.start.line,
          character: change.range.start.character,
          text: change.text,
          rangeLength: change.rangeLength,
        };
        const accepted = partialAcceptance(shown, edit);
        if (accepted !== undefined && shown && client) {
          void client.sendNotification("infill/didPartiallyAcceptCompletion", didPartiallyAcceptParams(shown.id, accepted));
          shown = advance(shown, change.text);
        } else if (shown && edit.uri === shown.uri) {
          shown = undefined; // the user went elsewhere
        }
      }
    }),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("infill") && client) {
        void client.sendNotification("workspace/didChangeConfiguration", {
          settings: { infill: serverSettings(readSettings()) },
        });
      }
    }),
  );
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("infill-lsp", { log: true });
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = "infill.toggle";
  setState("loading");
  status.show();
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("infill.toggle", () => {
      enabled = !enabled;
      setState(enabled ? "idle" : "off");
    }),
    vscode.commands.registerCommand("infill.restartServer", async () => {
      await client?.stop();
      client = undefined;
      await start(context);
    }),
    vscode.commands.registerCommand("infill.showLog", () => output.show()),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
