import * as fs from "fs";
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";
import {
  advance,
  Answer,
  answerAt,
  DEFAULTS,
  didPartiallyAcceptParams,
  didShowParams,
  findExecutable,
  INSTALL_COMMAND,
  itemId,
  missingServerMessage,
  partialAcceptance,
  ServerState,
  serverSettings,
  Settings,
  Shown,
  statusText,
  statusTooltip,
  typingThrough,
} from "./logic";

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let enabled = true;
let serverState: ServerState = "loading";
let serverDetail: string | undefined;
let stopping = false;
/** The first candidate of the last answer, as VS Code shows it; for partial-accept telemetry. */
let shown: Shown | undefined;
/** The last answer, to follow the user typing through it without asking the server. */
let answer: { key: Answer; items: vscode.InlineCompletionItem[] } | undefined;
const reported = new Set<string>();

function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration("infill");
  return {
    serverPath: c.get("serverPath", DEFAULTS.serverPath) || DEFAULTS.serverPath,
    serverArgs: c.get("serverArgs", DEFAULTS.serverArgs),
    candidates: c.get("candidates", DEFAULTS.candidates),
    maxTokens: c.get("maxTokens", DEFAULTS.maxTokens),
    steps: c.get("steps", DEFAULTS.steps),
    languages: c.get("languages", DEFAULTS.languages),
    engineAddress: c.get("engineAddress", DEFAULTS.engineAddress),
    model: c.get("model", DEFAULTS.model),
    showInvalid: c.get("showInvalid", DEFAULTS.showInvalid),
    seed: c.get("seed", DEFAULTS.seed),
  };
}

function setState(state: ServerState, detail?: string, percent?: number): void {
  serverState = state;
  serverDetail = detail;
  const shownState = enabled ? state : "off";
  status.text = statusText(shownState, detail, percent);
  status.tooltip = statusTooltip(shownState, detail);
}

function reportShown(item: vscode.InlineCompletionItem, document: vscode.TextDocument, position: vscode.Position, typed: string): void {
  const id = itemId(item.command);
  if (!id || typeof item.insertText !== "string") {
    shown = undefined;
    return;
  }
  const rest = document.lineAt(position.line).text.slice(position.character);
  let middle = item.insertText.endsWith(rest) ? item.insertText.slice(0, item.insertText.length - rest.length) : item.insertText;
  middle = middle.slice(typed.length);
  shown = { uri: document.uri.toString(), line: position.line, character: position.character, text: middle, id };
  // VS Code's stable API does not say which item is on screen; the first one is shown first.
  if (client && !reported.has(id)) {
    reported.add(id);
    void client.sendNotification("infill/didShowCompletion", didShowParams(id));
  }
}

async function provideInlineCompletionItems(
  document: vscode.TextDocument,
  position: vscode.Position,
  context: vscode.InlineCompletionContext,
  token: vscode.CancellationToken,
  next: (
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ) => vscode.ProviderResult<vscode.InlineCompletionItem[] | vscode.InlineCompletionList>,
): Promise<vscode.InlineCompletionItem[] | vscode.InlineCompletionList | undefined | null> {
  if (!enabled) return undefined;
  const uri = document.uri.toString();
  const text = document.getText();
  const offset = document.offsetAt(position);
  if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic && answer) {
    const keep = typingThrough(answer.key, { uri, text, offset });
    if (keep) {
      const start = document.positionAt(answer.key.offset);
      const range = new vscode.Range(start, document.lineAt(position.line).range.end);
      const items = keep.map((i) => {
        const old = answer!.items[i];
        return new vscode.InlineCompletionItem(old.insertText, range, old.command);
      });
      reportShown(items[0], document, position, text.slice(answer.key.offset, offset));
      return new vscode.InlineCompletionList(items);
    }
  }
  const result = await next(document, position, context, token);
  const items = Array.isArray(result) ? result : result?.items;
  if (items && items.length > 0 && !token.isCancellationRequested) {
    const start = document.offsetAt(items[0].range?.start ?? position);
    const insertTexts = items.map((item) => (typeof item.insertText === "string" ? item.insertText : item.insertText.value));
    answer = { key: answerAt(uri, text, start, insertTexts), items };
    reportShown(items[0], document, position, "");
  } else {
    answer = undefined;
    shown = undefined;
  }
  return result;
}

async function start(): Promise<void> {
  const settings = readSettings();
  const executable = findExecutable(settings.serverPath, process.env, (file) => {
    try {
      return fs.statSync(file).isFile();
    } catch {
      return false;
    }
  });
  if (!executable) {
    setState("error", "server not found");
    output.error(missingServerMessage(settings.serverPath));
    void vscode.window
      .showErrorMessage(missingServerMessage(settings.serverPath), "Copy install command", "Open Settings")
      .then((choice) => {
        if (choice === "Copy install command") void vscode.env.clipboard.writeText(INSTALL_COMMAND);
        if (choice === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "infill.serverPath");
      });
    return;
  }
  // No `transport`: stdio all the same, but TransportKind.stdio would append `--stdio` to the arguments.
  const serverOptions: ServerOptions = { command: executable, args: settings.serverArgs };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(settings),
    outputChannel: output,
    middleware: { provideInlineCompletionItems },
  };
  const created = new LanguageClient("infill", "infill-lsp", serverOptions, clientOptions);
  client = created;
  created.onNotification("infill/status", (params: { state: ServerState; message?: string; percent?: number }) =>
    setState(params.state, params.message, params.percent),
  );
  created.onDidChangeState((event) => {
    if (event.newState === State.Stopped && !stopping && client === created) setState("error", "the server stopped; see the log");
  });
  setState("loading");
  try {
    await created.start();
  } catch (error) {
    setState("error", String(error));
    output.error(`infill-lsp did not start: ${String(error)}`);
  }
}

async function stop(): Promise<void> {
  const running = client;
  client = undefined;
  answer = undefined;
  shown = undefined;
  if (!running) return;
  stopping = true;
  try {
    await running.stop();
  } catch (error) {
    output.warn(`stopping infill-lsp: ${String(error)}`);
  } finally {
    stopping = false;
  }
}

function onDidChangeTextDocument(event: vscode.TextDocumentChangeEvent): void {
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
      shown = undefined; // typing, or an edit elsewhere: the next answer says what is shown
    }
  }
}

async function onDidChangeConfiguration(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!event.affectsConfiguration("infill")) return;
  if (event.affectsConfiguration("infill.serverPath") || event.affectsConfiguration("infill.serverArgs")) {
    await stop();
    await start();
  } else if (client) {
    await client.sendNotification("workspace/didChangeConfiguration", { settings: { infill: serverSettings(readSettings()) } });
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("infill-lsp", { log: true });
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = "infill.toggle";
  status.name = "infill-lsp";
  setState("loading");
  status.show();
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("infill.toggle", () => {
      enabled = !enabled;
      setState(serverState, serverDetail);
      return enabled;
    }),
    vscode.commands.registerCommand("infill.restartServer", async () => {
      await stop();
      await start();
    }),
    vscode.commands.registerCommand("infill.showLog", () => output.show()),
    vscode.commands.registerCommand("infill.showStats", async () => {
      if (!client) {
        void vscode.window.showWarningMessage("infill-lsp is not running");
        return undefined;
      }
      const stats = await client.sendRequest("infill/stats", {});
      output.info(`stats: ${JSON.stringify(stats)}`);
      output.show(true);
      return stats;
    }),
    vscode.workspace.onDidChangeTextDocument(onDidChangeTextDocument),
    vscode.workspace.onDidChangeConfiguration((event) => void onDidChangeConfiguration(event)),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
