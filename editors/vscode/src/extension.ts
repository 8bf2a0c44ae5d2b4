import { execFile } from "child_process";
import * as fs from "fs";
import * as path from "path";
import * as readline from "readline";
import type { Readable } from "stream";
import * as vscode from "vscode";
import {
  CloseAction,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";
import {
  advance,
  afterExit,
  Answer,
  answerAt,
  askAgain,
  Asked,
  Cursor,
  DEFAULTS,
  doctorArgs,
  healthLines,
  didPartiallyAcceptParams,
  didShowParams,
  findExecutable,
  INSTALL_COMMAND,
  itemId,
  missingServerMessage,
  partialAcceptanceOf,
  printableInsert,
  ServerState,
  serverSettings,
  Settings,
  Shown,
  statusTooltip,
  statusView,
  stderrLevel,
  TOOLTIP_COMMANDS,
  versionMismatch,
  stoppedMessage,
  exitReason,
  remember,
  typingThrough,
} from "./logic";

/**
 * A server that does not start or stops is reported once, by the extension: the status bar and a
 * message with the server's own words (see start below), not also vscode-languageclient's generic
 * "couldn't create connection to server". And two unhandled rejections vscode-languageclient 10.1
 * leaves behind when the server exits while it starts are kept out of the extension host's log:
 * - it stops the client itself when initialize fails, and stop() rejects for a client that never
 *   came up ("Client is not running and can't be stopped"); such a client has nothing to stop;
 * - when the connection closes before initialize fails, start() resolves and the promise it had
 *   made for that start is rejected with no one listening. The state change to StartFailed is
 *   what reports it (see start below).
 */
class InfillClient extends LanguageClient {
  override error(message: string, data?: unknown, showNotification: boolean | "force" = true): void {
    super.error(message, data, this.state === State.StartFailed ? false : showNotification);
  }

  override async stop(timeout?: number): Promise<void> {
    if (this.state === State.Starting || this.state === State.StartFailed) return;
    return super.stop(timeout);
  }

  override start(): Promise<void> {
    const started = super.start();
    (this as unknown as { _onStart?: Promise<void> })._onStart?.catch(() => undefined);
    return started;
  }
}

let client: InfillClient | undefined;
let status: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let enabled = true;
let serverState: ServerState = "loading";
let serverDetail: string | undefined;
let serverPercent: number | undefined;
let stopping = false;
/** When the server stopped on its own lately (see afterExit). */
let exits: number[] = [];
/** The candidates of the last answer, as VS Code shows them; for partial-accept telemetry. */
let shown: Shown[] = [];
/** The last answer, to follow the user typing through it without asking the server. */
let answer: { key: Answer; items: vscode.InlineCompletionItem[] } | undefined;
const reported = new Set<string>();
/** Where a suggestion was last asked for: asked once more when the server turns ready (askAgain). */
let asked: Asked | undefined;
/** This extension's version, and the server's (initialize's serverInfo); a mismatch is shown once. */
let extensionVersion = "";
let serverVersion: string | undefined;
let versionWarned = false;

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
  serverPercent = percent;
  const view = statusView(state, enabled, detail, percent);
  status.text = view.text;
  // The tooltip is a menu: links to the health checks, the log, toggle and restart.
  const tooltip = new vscode.MarkdownString(statusTooltip(view.tooltip), true);
  tooltip.isTrusted = { enabledCommands: TOOLTIP_COMMANDS };
  status.tooltip = tooltip;
  status.command = view.command;
}

/** The server says how it is. From loading to ready: the suggestion asked for in vain while the
 * model loaded is asked for once more, if the user is still there (same document, same cursor). */
function onStatus(state: ServerState, detail?: string, percent?: number): void {
  const was = serverState;
  setState(state, detail, percent);
  const editor = vscode.window.activeTextEditor;
  const here: Cursor | undefined = editor && {
    uri: editor.document.uri.toString(),
    version: editor.document.version,
    line: editor.selection.active.line,
    character: editor.selection.active.character,
  };
  if (askAgain(was, state, asked, editor?.selection.isEmpty ? here : undefined, enabled)) {
    asked = undefined; // once
    void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger").then(undefined, (error) =>
      output.warn(`could not ask for a suggestion again: ${String(error)}`),
    );
  }
}

/** initialize's serverInfo: a server of another version is reported once (a warning and the log). */
function checkVersion(info: { name: string; version?: string } | undefined): void {
  serverVersion = info?.version;
  const warning = versionMismatch(extensionVersion, serverVersion);
  if (!warning || versionWarned) return;
  versionWarned = true;
  output.warn(warning);
  void vscode.window.showWarningMessage(warning);
}

/** `infill-lsp doctor --json` with the configured server command: the checks when no server runs. */
function runDoctor(): Promise<unknown> {
  const settings = readSettings();
  const executable = findExecutable(settings.serverPath, process.env, (file) => {
    try {
      return fs.statSync(file).isFile();
    } catch {
      return false;
    }
  });
  const args = doctorArgs(settings.serverArgs, settings);
  if (!executable) return Promise.resolve([{ name: "server", state: "fail", detail: missingServerMessage(settings.serverPath) }]);
  if (!args) return Promise.resolve([{ name: "doctor", state: "fail", detail: `infill.serverArgs has no "serve": ${settings.serverArgs.join(" ")}` }]);
  output.info(`health: no server running: ${executable} ${args.join(" ")}`);
  return new Promise((resolve) => {
    execFile(executable, args, { timeout: 60_000, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      try {
        resolve(JSON.parse(stdout)); // it exits 1 when a check fails: the checks say which
      } catch {
        const why = String(stderr).trim().split("\n").slice(-3).join(" ") || String(error ?? "no output");
        resolve([{ name: "doctor", state: "fail", detail: `infill-lsp doctor did not run: ${why}` }]);
      }
    });
  });
}

/** "Infill: Show Health": the doctor checks, from the running server (infill/health) or, with none
 * running, from `infill-lsp doctor --json`, written to the output channel, which is shown. */
async function showHealth(): Promise<unknown> {
  const server = running();
  let checks: unknown;
  if (server) {
    try {
      checks = await server.sendRequest("infill/health", {});
    } catch (error) {
      output.error(`health: the server did not answer infill/health: ${String(error)}`);
    }
  }
  if (checks === undefined) checks = await runDoctor();
  output.info(`health: extension ${extensionVersion}, server ${serverVersion ?? (server ? "version unknown" : "not running")}`);
  for (const line of healthLines(checks)) output[line.level](line.text);
  output.show(true);
  return checks;
}

function running(): InfillClient | undefined {
  return client?.isRunning() ? client : undefined;
}

/** The server did not start or stopped on its own: the status bar says why, and so does a message. */
function reportStopped(reason: string): void {
  setState("error", reason);
  output.error(stoppedMessage(reason));
  void vscode.window.showErrorMessage(stoppedMessage(reason), "Show log", "Restart server").then((choice) => {
    if (choice === "Show log") output.show();
    if (choice === "Restart server") void vscode.commands.executeCommand("infill.restartServer");
  });
}

/** Forward a stream line by line; resolves when it ends. */
function lines(input: Readable, onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve) => {
    const reader = readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 });
    reader.on("line", onLine);
    reader.on("close", () => resolve());
  });
}

/** The answer's candidates as VS Code shows them (each without the rest of the line and what was
 * typed through), for partial-accept telemetry; the first one counts as shown. */
function reportShown(items: vscode.InlineCompletionItem[], document: vscode.TextDocument, position: vscode.Position): void {
  const rest = document.lineAt(position.line).text.slice(position.character);
  shown = [];
  for (const item of items) {
    const id = itemId(item.command);
    if (!id || typeof item.insertText !== "string") continue;
    // what the item's range holds before the cursor: text typed through it, or the start of the completion menu's item it extends
    const typed = item.range ? document.getText(new vscode.Range(item.range.start, position)) : "";
    const whole = item.insertText.endsWith(rest) ? item.insertText.slice(0, item.insertText.length - rest.length) : item.insertText;
    const added = whole.startsWith(typed) ? whole.slice(typed.length) : whole;
    shown.push({ uri: document.uri.toString(), line: position.line, character: position.character, text: added, id });
  }
  // VS Code's stable API does not say which item is on screen; the first one is shown first.
  if (shown.length > 0 && itemId(items[0].command) === shown[0].id) reportShownOnce(shown[0].id);
}

function reportShownOnce(id: string): void {
  if (client && !reported.has(id)) {
    reported.add(id);
    void client.sendNotification("infill/didShowCompletion", didShowParams(id));
  }
}

/** The server's items without control characters in what they add (see printableInsert). */
function printableItems(items: vscode.InlineCompletionItem[], document: vscode.TextDocument, position: vscode.Position) {
  const text = document.getText();
  const cursor = document.offsetAt(position);
  const kept: vscode.InlineCompletionItem[] = [];
  for (const item of items) {
    const range = item.range ?? new vscode.Range(position, position);
    const [start, end] = [document.offsetAt(range.start), document.offsetAt(range.end)];
    const [before, after] = start <= cursor && cursor <= end ? [text.slice(start, cursor), text.slice(cursor, end)] : ["", ""];
    const snippet = typeof item.insertText !== "string";
    const clean = printableInsert(typeof item.insertText === "string" ? item.insertText : item.insertText.value, before, after);
    if (clean === undefined) continue;
    item.insertText = snippet ? new vscode.SnippetString(clean) : clean;
    kept.push(item);
  }
  return kept;
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
  const here: Asked = { uri, version: document.version, line: position.line, character: position.character, items: 0 };
  asked = here;
  // With the completion menu open the server completes the document as its selected item would leave
  // it, and VS Code shows only items that extend that item: the last answer is no use.
  const selecting = context.selectedCompletionInfo !== undefined;
  if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic && answer && !selecting) {
    const keep = typingThrough(answer.key, { uri, text, offset });
    if (keep) {
      const start = document.positionAt(answer.key.offset);
      const range = new vscode.Range(start, document.lineAt(position.line).range.end);
      const items = keep.map((i) => {
        const old = answer!.items[i];
        return new vscode.InlineCompletionItem(old.insertText, range, old.command);
      });
      reportShown(items, document, position);
      here.items = items.length;
      return new vscode.InlineCompletionList(items);
    }
  }
  const answered = await next(document, position, context, token);
  const items = printableItems((Array.isArray(answered) ? answered : answered?.items) ?? [], document, position);
  if (answered && !Array.isArray(answered)) answered.items = items;
  const result = Array.isArray(answered) ? items : answered;
  here.items = items.length;
  if (items.length > 0 && !token.isCancellationRequested) {
    const start = document.offsetAt(items[0].range?.start ?? position);
    const insertTexts = items.map((item) => (typeof item.insertText === "string" ? item.insertText : item.insertText.value));
    answer = selecting ? undefined : { key: answerAt(uri, text, start, insertTexts), items };
    reportShown(items, document, position);
  } else {
    answer = undefined;
    shown = [];
  }
  return result;
}

async function start(): Promise<void> {
  const settings = readSettings();
  exits = [];
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
  if (process.platform !== "win32") {
    try {
      fs.accessSync(executable, fs.constants.X_OK);
    } catch {
      reportStopped(`cannot start ${executable}: it is not executable`);
      return;
    }
  }
  // As vscode-languageclient starts stdio servers: `<serverPath> <serverArgs> --stdio`.
  const serverOptions: ServerOptions = { command: executable, args: settings.serverArgs, transport: TransportKind.stdio };
  const stderr: string[] = []; // the last lines of this server process, to say why it stopped
  let stderrEnded: Promise<void> = Promise.resolve();
  let cameUp = false; // this server process answered initialize
  let restarting = false; // it stopped and vscode-languageclient starts another
  let told = false; // its failure was reported
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(settings),
    outputChannel: output,
    middleware: { provideInlineCompletionItems },
    stdioOptions: {
      stdout: (input, channel) => void lines(input, (line) => channel.info(line)),
      stderr: (input, channel) => {
        stderr.length = 0;
        stderrEnded = lines(input, (line) => {
          channel[stderrLevel(line)](line);
          remember(stderr, line);
        });
      },
    },
    errorHandler: {
      // logged; a connection that fails for good stops the client, which the state change reports
      error: (_error, _message, count) => ({
        action: count !== undefined && count <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
        handled: true,
      }),
      closed: () => {
        const decision = afterExit(exits, Date.now(), cameUp);
        exits = decision.exits;
        if (!decision.restart) return { action: CloseAction.DoNotRestart, handled: true }; // reported below
        output.warn(`infill-lsp stopped (${exitReason(stderr) ?? "no reason given"}); restarting it`);
        restarting = true;
        setState("loading", "restarting the server");
        return { action: CloseAction.Restart, handled: true };
      },
    },
    // The state change below reports it, with the server's own words (no second, generic message).
    initializationFailedHandler: () => false,
  };
  const created = new InfillClient("infill", "infill-lsp", serverOptions, clientOptions);
  client = created;
  const failed = async (fallback: string) => {
    if (told || stopping || client !== created) return;
    told = true;
    // the process is gone: let its last stderr lines arrive
    await Promise.race([stderrEnded, new Promise((resolve) => setTimeout(resolve, 1000))]);
    const over = created.state === State.Stopped || created.state === State.StartFailed;
    if (client === created && !stopping && over) reportStopped(exitReason(stderr) ?? fallback);
  };
  created.onNotification("infill/status", (params: { state: ServerState; message?: string; percent?: number }) =>
    onStatus(params.state, params.message, params.percent),
  );
  created.onDidChangeState((event) => {
    if (event.newState === State.Starting) {
      [cameUp, restarting, told] = [false, false, false];
      reported.clear(); // a new server process numbers its items afresh
    }
    if (event.newState === State.Running) {
      cameUp = true;
      checkVersion(created.initializeResult?.serverInfo);
    }
    if (event.newState === State.StartFailed) void failed("the server exited before it started");
    if (event.newState === State.Stopped && !restarting) void failed("the server exited");
  });
  setState("loading");
  try {
    await created.start();
  } catch (error) {
    output.error(`infill-lsp did not start: ${String(error)}`);
    void failed(String(error));
  }
}

async function stop(): Promise<void> {
  const current = client;
  client = undefined;
  answer = undefined;
  shown = [];
  asked = undefined;
  if (!current) return;
  stopping = true;
  try {
    if (current.state === State.Starting) {
      // let it come up (or fail) first: a client that is starting cannot be stopped
      await Promise.race([current.start().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 10_000))]);
    }
    if (current.state === State.Running) await current.stop();
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
    const accepted = partialAcceptanceOf(shown, edit);
    const server = running();
    if (accepted !== undefined && server) {
      // The user took part of it, so it was on screen, whichever candidate they had cycled to.
      const taken = shown[accepted.index];
      reportShownOnce(taken.id);
      void server.sendNotification("infill/didPartiallyAcceptCompletion", didPartiallyAcceptParams(taken.id, accepted.length));
      shown = [advance(taken, change.text)];
    } else if (shown.length > 0 && edit.uri === shown[0].uri) {
      shown = []; // typing, or an edit elsewhere: the next answer says what is shown
    }
  }
}

async function onDidChangeConfiguration(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!event.affectsConfiguration("infill")) return;
  if (event.affectsConfiguration("infill.serverPath") || event.affectsConfiguration("infill.serverArgs")) {
    await stop();
    await start();
  } else if (running()) {
    await running()!.sendNotification("workspace/didChangeConfiguration", { settings: { infill: serverSettings(readSettings()) } });
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extensionVersion =
    context.extension?.packageJSON?.version ??
    JSON.parse(fs.readFileSync(path.join(__dirname, "..", "package.json"), "utf8")).version;
  versionWarned = false;
  serverVersion = undefined;
  output = vscode.window.createOutputChannel("infill-lsp", { log: true });
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.name = "infill-lsp";
  setState("loading");
  status.show();
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("infill.toggle", () => {
      enabled = !enabled;
      setState(serverState, serverDetail, serverPercent);
      if (!enabled) {
        // Off means off: the suggestion on screen goes too (Tab would still accept it).
        void vscode.commands.executeCommand("editor.action.inlineSuggest.hide").then(undefined, (error) =>
          output.warn(`could not hide the suggestion: ${String(error)}`),
        );
      }
      return enabled;
    }),
    vscode.commands.registerCommand("infill.restartServer", async () => {
      await stop();
      await start();
    }),
    vscode.commands.registerCommand("infill.showLog", () => output.show()),
    vscode.commands.registerCommand("infill.showHealth", showHealth),
    vscode.commands.registerCommand("infill.showStats", async () => {
      const server = running();
      if (!server) {
        void vscode.window.showWarningMessage("infill-lsp is not running");
        return undefined;
      }
      const stats = await server.sendRequest("infill/stats", {});
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
