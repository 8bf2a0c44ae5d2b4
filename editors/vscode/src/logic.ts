// Pure logic of the extension (no `vscode` import), so it is unit-tested under plain node.

export type Settings = {
  serverPath: string;
  serverArgs: string[];
  candidates: number;
  maxTokens: number;
  steps: number;
  languages: Record<string, boolean>;
  engineAddress: string;
  model: string;
  showInvalid: boolean;
  seed: number | null;
};

export const DEFAULTS: Settings = {
  serverPath: "infill-lsp",
  serverArgs: ["serve"],
  candidates: 4,
  maxTokens: 32,
  steps: 16,
  languages: {},
  engineAddress: "",
  model: "",
  showInvalid: false,
  seed: null,
};

/** The settings object the server reads from initializationOptions and didChangeConfiguration. */
export function serverSettings(s: Settings): Record<string, unknown> {
  const out: Record<string, unknown> = {
    candidates: s.candidates,
    invokedCandidates: Math.max(s.candidates, 8),
    maxTokens: s.maxTokens,
    steps: s.steps,
    invokedSteps: Math.max(s.steps, 24),
    languages: s.languages,
    showInvalid: s.showInvalid,
  };
  if (s.engineAddress) out.engineAddress = s.engineAddress;
  if (s.model) out.model = s.model;
  if (typeof s.seed === "number") out.seed = s.seed;
  return out;
}

export type ServerState = "idle" | "busy" | "loading" | "error" | "off";

export type StatusView = { text: string; tooltip: string; command: string };

/**
 * The status bar item for the server's state. `enabled` is the user's toggle: "off" hides the
 * server's state, except an error, which needs attention; a click on an error shows the log,
 * otherwise it toggles suggestions.
 */
export function statusView(state: ServerState, enabled: boolean, detail?: string, percent?: number): StatusView {
  const shown: ServerState = enabled || state === "error" ? state : "off";
  const text = {
    idle: "$(sparkle) infill",
    busy: "$(sync~spin) infill",
    loading: `$(loading~spin) infill: loading${percent !== undefined ? ` ${percent}%` : ""}`,
    error: "$(error) infill",
    off: "$(circle-slash) infill",
  }[shown];
  const base = { idle: "ready", busy: "thinking", loading: "loading the model", error: "error", off: "disabled" }[shown];
  // The server's own error lines start "infill-lsp: error: "; the tooltip says that once.
  const reason = detail?.replace(/^infill-lsp:\s*(error:\s*)?/, "");
  const tooltip = reason ? `infill-lsp: ${base}: ${reason}` : `infill-lsp: ${base}`;
  if (shown === "error") return { text, tooltip: `${tooltip} (click to show the log)`, command: "infill.showLog" };
  return { text, tooltip, command: "infill.toggle" };
}

export const INSTALL_COMMAND = "pip install infill-lsp";

export function missingServerMessage(path: string): string {
  return (
    `infill-lsp: the server "${path}" was not found. Install it with \`${INSTALL_COMMAND}\` ` +
    "(or `scripts/setup` in a checkout of infill-lsp) and set `infill.serverPath` to the `infill-lsp` executable."
  );
}

/**
 * Where `executable` would be run from: itself when it names a path, else the first match on
 * PATH (with PATHEXT's extensions on Windows). Undefined when there is none.
 */
export function findExecutable(
  executable: string,
  env: Record<string, string | undefined>,
  exists: (file: string) => boolean,
  platform: string = process.platform,
): string | undefined {
  const windows = platform === "win32";
  const sep = windows ? "\\" : "/";
  const join = (dir: string, name: string) => (dir.endsWith(sep) || dir.endsWith("/") ? dir + name : dir + sep + name);
  const extensions = windows ? ["", ...(env.PATHEXT ?? ".EXE;.CMD;.BAT;.COM").split(";").filter(Boolean)] : [""];
  const candidates = (file: string) => extensions.map((ext) => file + ext);
  if (executable.includes("/") || (windows && executable.includes("\\"))) {
    return candidates(executable).find(exists);
  }
  const path = env.PATH ?? (windows ? env.Path : undefined) ?? "";
  for (const dir of path.split(windows ? ";" : ":").filter(Boolean)) {
    const found = candidates(join(dir, executable)).find(exists);
    if (found) return found;
  }
  return undefined;
}

/** Control characters other than tab and line feed: C0, DEL, C1. */
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;

/** `text` without the characters a suggestion must never show or insert (the server leaves them
 * out too; this is defence in depth). */
export function printable(text: string): string {
  return text.replace(CONTROLS, "");
}

/**
 * An item's insertText without control characters in the text it adds. `before` / `after`: the
 * document's text in the item's range before / after the cursor, which the item repeats (what was
 * typed, the rest of the line) and which is kept as it is. Undefined when the item adds nothing
 * once cleaned: drop it.
 */
export function printableInsert(insertText: string, before: string, after: string): string | undefined {
  const repeats =
    insertText.length >= before.length + after.length && insertText.startsWith(before) && insertText.endsWith(after);
  const [head, tail] = repeats ? [before, after] : ["", ""];
  const middle = insertText.slice(head.length, insertText.length - tail.length);
  const clean = printable(middle);
  return clean === "" && middle !== "" ? undefined : head + clean + tail;
}

/** Payloads of the acceptance telemetry the server counts (local only). */
export function itemId(command: { arguments?: unknown[] } | undefined): string | undefined {
  const arg = command?.arguments?.[0] as { id?: unknown } | undefined;
  return typeof arg?.id === "string" ? arg.id : undefined;
}

export function didShowParams(id: string): { id: string } {
  return { id };
}

export function didPartiallyAcceptParams(id: string, acceptedLength: number): { id: string; acceptedLength: number } {
  return { id, acceptedLength: Math.max(0, Math.floor(acceptedLength)) };
}

/** A candidate VS Code may show: where, and the text it would insert there. */
export type Shown = { uri: string; line: number; character: number; text: string; id: string };

export type Insertion = { uri: string; line: number; character: number; text: string; rangeLength: number };

/**
 * VS Code's stable API does not report partial acceptance, but its effect is visible: accept
 * word / accept line insert several characters at the suggestion's position that begin the
 * suggestion. A single character is typing; the whole suggestion arrives through the item's
 * command. Returns the accepted length, or undefined when the edit is not a partial accept.
 */
export function partialAcceptance(shown: Shown | undefined, edit: Insertion): number | undefined {
  if (!shown || edit.uri !== shown.uri || edit.rangeLength !== 0) return undefined;
  if (edit.line !== shown.line || edit.character !== shown.character) return undefined;
  const text = asSuggested(edit.text);
  if (text.length < 2 || text.length >= shown.text.length) return undefined;
  return shown.text.startsWith(text) ? text.length : undefined;
}

/** What VS Code inserted, with the line breaks of a suggestion: in a CRLF document it inserts a
 * piece of the suggestion with its "\n" turned into "\r\n". */
function asSuggested(inserted: string): string {
  return inserted.replace(/\r\n/g, "\n");
}

/** Which of the answer's candidates a partial acceptance took from (the one on screen is the one
 * the insertion begins; the first such when several begin alike), and how much. */
export function partialAcceptanceOf(candidates: Shown[], edit: Insertion): { index: number; length: number } | undefined {
  for (const [index, candidate] of candidates.entries()) {
    const length = partialAcceptance(candidate, edit);
    if (length !== undefined) return { index, length };
  }
  return undefined;
}

/** Where the rest of the suggestion stands after `accepted` characters of it went in. */
export function advance(shown: Shown, accepted: string): Shown {
  accepted = asSuggested(accepted);
  const lines = accepted.split("\n");
  const line = shown.line + lines.length - 1;
  const character = (lines.length === 1 ? shown.character : 0) + lines[lines.length - 1].length;
  return { ...shown, line, character, text: shown.text.slice(accepted.length) };
}

/** The last answer, kept to follow the user typing through it (see typingThrough). */
export type Answer = {
  uri: string;
  offset: number; // where the items start (the cursor when asked), in the document's text
  before: string; // the document before that point
  after: string; // the document after it
  rest: string; // the rest of that line, which every insertText ends with
  insertTexts: string[];
};

export type Here = { uri: string; text: string; offset: number };

export function answerAt(uri: string, text: string, offset: number, insertTexts: string[]): Answer {
  const lineEnd = text.indexOf("\n", offset);
  const rest = text.slice(offset, lineEnd === -1 ? text.length : lineEnd).replace(/\r$/, "");
  return { uri, offset, before: text.slice(0, offset), after: text.slice(offset), rest, insertTexts };
}

/**
 * Typing through: since the last answer the user typed the start of what it suggests, and the
 * document is otherwise unchanged. Returns the indexes of the items that still fit (VS Code keeps
 * showing them, their range now over the typed text, without asking the server), or undefined
 * when the server must be asked.
 */
export function typingThrough(answer: Answer | undefined, here: Here): number[] | undefined {
  if (!answer || here.uri !== answer.uri || here.offset < answer.offset) return undefined;
  const typed = here.text.slice(answer.offset, here.offset);
  if (typed.includes("\n") || here.text.length !== answer.before.length + typed.length + answer.after.length) return undefined;
  if (!here.text.startsWith(answer.before) || !here.text.endsWith(answer.after)) return undefined;
  const keep: number[] = [];
  answer.insertTexts.forEach((text, index) => {
    const middle = text.endsWith(answer.rest) ? text.slice(0, text.length - answer.rest.length) : text;
    if (middle.length > typed.length && middle.startsWith(typed)) keep.push(index);
  });
  return keep.length > 0 ? keep : undefined;
}

// -- the server process ---------------------------------------------------------------------------

/** A line the server wrote on stderr that reports an error: argparse's "infill-lsp serve: error: ...",
 * a Python exception, a logged ERROR or CRITICAL. */
export function isErrorLine(line: string): boolean {
  return /\b(error|critical|fatal)\b/i.test(line) || /^\s*[A-Za-z_][\w.]*(Error|Exception|Exit)\b/.test(line);
}

/** The level to log a stderr line at (the server logs "<time> LEVEL logger: message"). */
export function stderrLevel(line: string): "error" | "warn" | "info" {
  if (isErrorLine(line)) return "error";
  return /\bWARNING\b/.test(line) ? "warn" : "info";
}

/** Keep the last `keep` lines of stderr, to say why the server stopped. */
export function remember(tail: string[], line: string, keep = 40): void {
  tail.push(line);
  if (tail.length > keep) tail.splice(0, tail.length - keep);
}

/** Why the server stopped, from the end of its stderr: the last line that reports an error. */
export function exitReason(stderr: string[]): string | undefined {
  for (let i = stderr.length - 1; i >= 0; i--) {
    const line = stderr[i].trim();
    if (line && isErrorLine(line)) return line.length > 300 ? line.slice(0, 299) + "…" : line;
  }
  return undefined;
}

export function stoppedMessage(reason: string): string {
  return `infill-lsp stopped: ${reason}`;
}

export const RESTART_WINDOW_MS = 3 * 60 * 1000;
export const MAX_RESTARTS = 3;

/**
 * The server stopped without being asked to. A server that had come up (answered initialize) is
 * restarted, at most MAX_RESTARTS times in RESTART_WINDOW_MS; one that never came up (bad
 * arguments, a broken install) would only fail the same way again. `exits`: when it stopped
 * before (kept for the next call).
 */
export function afterExit(exits: number[], now: number, cameUp: boolean): { restart: boolean; exits: number[] } {
  const recent = [...exits.filter((t) => now - t < RESTART_WINDOW_MS), now];
  return { restart: cameUp && recent.length <= MAX_RESTARTS, exits: recent };
}

// -- health: the checks of `infill-lsp doctor` ------------------------------------------------------

/** One check as `infill-lsp doctor --json` prints it and the server's `infill/health` answers. */
export type Check = { name: string; state: "ok" | "warn" | "fail"; detail: string; fix?: string };

export type LogLine = { level: "info" | "warn" | "error"; text: string };

/** The checks as output-channel lines: one per check at its level, its fix on the next line. */
export function healthLines(checks: unknown): LogLine[] {
  if (!Array.isArray(checks)) return [{ level: "error", text: `health: not a list of checks: ${JSON.stringify(checks)}` }];
  const lines: LogLine[] = [];
  for (const check of checks as Partial<Check>[]) {
    const state = check?.state;
    const level = state === "ok" ? "info" : state === "warn" ? "warn" : "error";
    const mark = state === "ok" ? "ok  " : state === "warn" ? "warn" : "FAIL";
    lines.push({ level, text: `${mark} ${String(check?.name)}: ${String(check?.detail)}` });
    if (typeof check?.fix === "string" && check.fix) lines.push({ level, text: `     fix: ${check.fix}` });
  }
  return lines;
}

/**
 * The arguments of `infill-lsp doctor --json` for a server started with `serverArgs` (its `serve`
 * replaced, its transport flags dropped) and the model and engine the settings name, which the
 * server would get in initializationOptions. Undefined when the arguments have no `serve`.
 */
export function doctorArgs(serverArgs: string[], settings: Pick<Settings, "model" | "engineAddress">): string[] | undefined {
  const serve = serverArgs.indexOf("serve");
  if (serve < 0) return undefined;
  const rest: string[] = [];
  for (let i = serve + 1; i < serverArgs.length; i++) {
    const arg = serverArgs[i];
    if (arg === "--tcp") i++;
    else if (arg !== "--stdio" && !arg.startsWith("--tcp=")) rest.push(arg);
  }
  const out = [...serverArgs.slice(0, serve), "doctor", "--json", ...rest];
  if (settings.model && !out.includes("--model")) out.push("--model", settings.model);
  if (settings.engineAddress && !out.includes("--engine")) out.push("--engine", settings.engineAddress);
  return out;
}

// -- versions --------------------------------------------------------------------------------------

/** What to say when the server (initialize's serverInfo.version) is not the extension's version. */
export function versionMismatch(extension: string, server: string | undefined): string | undefined {
  if (typeof server !== "string" || server === extension) return undefined;
  return (
    `infill-lsp: the server is version ${server} but this extension is ${extension}; ` +
    "update them together (pip install -U infill-lsp, and the extension from the same release)."
  );
}

// -- the first suggestion while the model loads ----------------------------------------------------

/** Where a suggestion was last asked for, and how many items came back. */
export type Asked = { uri: string; version: number; line: number; character: number; items: number };

/** The active editor's document and cursor. */
export type Cursor = { uri: string; version: number; line: number; character: number };

/**
 * The server turned ready (loading -> idle) and its answer while loading was empty: ask once more
 * when the user is still where that was asked (same document version, same cursor).
 */
export function askAgain(was: ServerState, now: ServerState, asked: Asked | undefined, here: Cursor | undefined, enabled: boolean): boolean {
  if (!enabled || was !== "loading" || now !== "idle" || !asked || !here || asked.items > 0) return false;
  return asked.uri === here.uri && asked.version === here.version && asked.line === here.line && asked.character === here.character;
}

// -- the status bar item's tooltip -----------------------------------------------------------------

/** `text` with Markdown's syntax characters escaped (as VS Code's MarkdownString.appendText does). */
export function markdownText(text: string): string {
  return text.replace(/[\\`*_{}[\]()#+\-!~]/g, "\\$&");
}

/** The commands the status bar item's tooltip links to. */
export const TOOLTIP_COMMANDS = ["infill.showHealth", "infill.showLog", "infill.toggle", "infill.restartServer"];

/** The tooltip as Markdown: the state, then links to the health checks, the log, toggle, restart. */
export function statusTooltip(tooltip: string): string {
  return (
    `${markdownText(tooltip)}\n\n` +
    "[$(pulse) Show Health](command:infill.showHealth) · [$(output) Show Log](command:infill.showLog) · " +
    "[Toggle](command:infill.toggle) · [Restart](command:infill.restartServer)"
  );
}
