// A stand-in for the `vscode` module, enough for the extension and vscode-languageclient to run
// under plain node (no VS Code download): documents, events, settings, commands, the status bar
// and the inline completion provider registry. Tests drive it like the editor would.
/* eslint-disable @typescript-eslint/no-explicit-any */

export class Disposable {
  constructor(private readonly fn: () => void = () => undefined) {}
  static from(...items: { dispose(): any }[]): Disposable {
    return new Disposable(() => items.forEach((i) => i?.dispose()));
  }
  dispose(): void {
    this.fn();
  }
}

export class EventEmitter<T> {
  private listeners = new Set<(e: T) => any>();
  event = (listener: (e: T) => any, thisArgs?: any, disposables?: Disposable[]): Disposable => {
    const bound = (e: T) => listener.call(thisArgs, e);
    this.listeners.add(bound);
    const d = new Disposable(() => this.listeners.delete(bound));
    disposables?.push(d);
    return d;
  };
  /** As VS Code's emitters: a listener that throws is reported and the others still run. */
  fire(e: T): void {
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch (error) {
        fake.listenerErrors.push(String(error));
      }
    }
  }
  dispose(): void {
    this.listeners.clear();
  }
}

export class CancellationError extends Error {}

export class CancellationTokenSource {
  private emitter = new EventEmitter<void>();
  token = { isCancellationRequested: false, onCancellationRequested: this.emitter.event };
  cancel(): void {
    if (!this.token.isCancellationRequested) {
      this.token.isCancellationRequested = true;
      this.emitter.fire();
    }
  }
  dispose(): void {
    this.emitter.dispose();
  }
}

export class Position {
  constructor(readonly line: number, readonly character: number) {}
  isEqual(o: Position): boolean {
    return o.line === this.line && o.character === this.character;
  }
  isBefore(o: Position): boolean {
    return this.line < o.line || (this.line === o.line && this.character < o.character);
  }
  translate(lineDelta = 0, characterDelta = 0): Position {
    return new Position(this.line + lineDelta, this.character + characterDelta);
  }
  with(line = this.line, character = this.character): Position {
    return new Position(line, character);
  }
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(a: any, b: any, c?: number, d?: number) {
    if (typeof a === "number") {
      this.start = new Position(a, b);
      this.end = new Position(c!, d!);
    } else {
      this.start = a;
      this.end = b;
    }
  }
  get isEmpty(): boolean {
    return this.start.isEqual(this.end);
  }
}

export class Uri {
  private constructor(readonly scheme: string, readonly path: string) {}
  static parse(value: string): Uri {
    const m = /^([a-z][a-z0-9+.-]*):(?:\/\/)?(.*)$/i.exec(value);
    return m ? new Uri(m[1], decodeURIComponent(m[2].startsWith("/") ? m[2] : "/" + m[2])) : new Uri("file", value);
  }
  static file(path: string): Uri {
    return new Uri("file", path);
  }
  get fsPath(): string {
    return this.path;
  }
  get authority(): string {
    return "";
  }
  get query(): string {
    return "";
  }
  get fragment(): string {
    return "";
  }
  with(change: { scheme?: string; path?: string }): Uri {
    return new Uri(change.scheme ?? this.scheme, change.path ?? this.path);
  }
  toString(): string {
    return `${this.scheme}://${encodeURI(this.path)}`;
  }
  toJSON(): any {
    return { scheme: this.scheme, path: this.path };
  }
}

export class SnippetString {
  constructor(public value = "") {}
}

export class InlineCompletionItem {
  constructor(public insertText: string | SnippetString, public range?: Range, public command?: any) {}
}

export class InlineCompletionList {
  constructor(public items: InlineCompletionItem[]) {}
}

export class MarkdownString {
  constructor(public value = "") {}
}

export class RelativePattern {
  constructor(public base: any, public pattern: string) {}
}

export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}
export enum ProgressLocation {
  SourceControl = 1,
  Window = 10,
  Notification = 15,
}
export enum LogLevel {
  Off = 0,
  Trace = 1,
  Debug = 2,
  Info = 3,
  Warning = 4,
  Error = 5,
}
export enum TextDocumentSaveReason {
  Manual = 1,
  AfterDelay = 2,
  FocusOut = 3,
}
export enum DiagnosticSeverity {
  Error = 0,
  Warning = 1,
  Information = 2,
  Hint = 3,
}
export enum EndOfLine {
  LF = 1,
  CRLF = 2,
}

export const version = "1.91.0";

/** A text document: lines, versions, offsets; `edit` applies a change and returns the event. */
export class TextDocument {
  version = 1;
  isClosed = false;
  isDirty = false;
  isUntitled = false;
  eol = EndOfLine.LF;
  constructor(readonly uri: Uri, readonly languageId: string, private text: string) {}
  get fileName(): string {
    return this.uri.fsPath;
  }
  get lineCount(): number {
    return this.text.split("\n").length;
  }
  getText(range?: Range): string {
    return range ? this.text.slice(this.offsetAt(range.start), this.offsetAt(range.end)) : this.text;
  }
  lineAt(line: number | Position): { text: string; range: Range; lineNumber: number } {
    const n = typeof line === "number" ? line : line.line;
    const text = this.text.split("\n")[n];
    return { text, range: new Range(n, 0, n, text.length), lineNumber: n };
  }
  offsetAt(p: Position): number {
    const lines = this.text.split("\n");
    let offset = 0;
    for (let i = 0; i < p.line; i++) offset += lines[i].length + 1;
    return offset + p.character;
  }
  positionAt(offset: number): Position {
    const before = this.text.slice(0, offset).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  edit(range: Range, text: string): any {
    const start = this.offsetAt(range.start);
    const end = this.offsetAt(range.end);
    this.text = this.text.slice(0, start) + text + this.text.slice(end);
    this.version++;
    return {
      document: this,
      contentChanges: [{ range, rangeOffset: start, rangeLength: end - start, text }],
      reason: undefined,
    };
  }
}

// -- the editor's state, which tests read and drive ------------------------------------------------

export const fake = {
  settings: {} as Record<string, any>,
  commands: new Map<string, (...args: any[]) => any>(),
  inlineProviders: [] as { selector: any; provider: any }[],
  statusBarItems: [] as any[],
  messages: [] as { level: string; text: string; items: string[] }[],
  log: [] as string[],
  listenerErrors: [] as string[],
  clipboard: "",
  documents: [] as TextDocument[],
  onDidOpenTextDocument: new EventEmitter<TextDocument>(),
  onDidCloseTextDocument: new EventEmitter<TextDocument>(),
  onDidChangeTextDocument: new EventEmitter<any>(),
  onDidChangeConfiguration: new EventEmitter<any>(),
};

function noop(): Disposable {
  return new Disposable();
}

/** Unknown members of a namespace: events and registrations that do nothing. */
function namespace<T extends object>(known: T): T {
  return new Proxy(known, {
    get(target: any, name: string | symbol) {
      if (name in target) return target[name];
      if (typeof name === "string" && /^(on[A-Z]|register|create)/.test(name)) return () => noop();
      return undefined;
    },
  });
}

function outputChannel(name: string): any {
  const line = (level: string) => (message: string) => fake.log.push(`[${name}] ${level} ${message}`);
  return {
    name,
    logLevel: LogLevel.Info,
    onDidChangeLogLevel: () => noop(),
    append: line("append"),
    appendLine: line("line"),
    replace: line("replace"),
    trace: line("trace"),
    debug: line("debug"),
    info: line("info"),
    warn: line("warn"),
    error: line("error"),
    clear: () => undefined,
    show: () => undefined,
    hide: () => undefined,
    dispose: () => undefined,
  };
}

function message(level: string) {
  return (text: string, ...items: any[]) => {
    const labels = items.filter((i) => typeof i === "string" || (i && typeof i.title === "string"));
    fake.messages.push({ level, text, items: labels.map((i) => (typeof i === "string" ? i : i.title)) });
    return Promise.resolve(undefined);
  };
}

export const window = namespace({
  activeTextEditor: undefined,
  visibleTextEditors: [],
  tabGroups: { all: [], onDidChangeTabs: () => noop(), onDidChangeTabGroups: () => noop() },
  createOutputChannel: outputChannel,
  createStatusBarItem: (alignment?: StatusBarAlignment, priority?: number) => {
    const item: any = { alignment, priority, tooltip: "", visible: false, texts: [] as string[] };
    let text = "";
    Object.defineProperty(item, "text", {
      get: () => text,
      set: (value: string) => {
        text = value;
        if (item.texts[item.texts.length - 1] !== value) item.texts.push(value);
      },
    });
    item.show = () => (item.visible = true);
    item.hide = () => (item.visible = false);
    item.dispose = () => (item.visible = false);
    fake.statusBarItems.push(item);
    return item;
  },
  showErrorMessage: message("error"),
  showWarningMessage: message("warning"),
  showInformationMessage: message("info"),
  withProgress: (_options: any, task: (progress: any, token: any) => any) =>
    task({ report: () => undefined }, new CancellationTokenSource().token),
});

export const workspace = namespace({
  workspaceFolders: undefined,
  notebookDocuments: [],
  get textDocuments() {
    return fake.documents;
  },
  getConfiguration: (section?: string) => ({
    get: (key: string, defaultValue?: any) => {
      const full = section ? `${section}.${key}` : key;
      return full in fake.settings ? fake.settings[full] : defaultValue;
    },
    has: (key: string) => (section ? `${section}.${key}` : key) in fake.settings,
    inspect: () => undefined,
    update: () => Promise.resolve(),
  }),
  onDidOpenTextDocument: fake.onDidOpenTextDocument.event,
  onDidCloseTextDocument: fake.onDidCloseTextDocument.event,
  onDidChangeTextDocument: fake.onDidChangeTextDocument.event,
  onDidChangeConfiguration: fake.onDidChangeConfiguration.event,
  createFileSystemWatcher: () => ({
    onDidCreate: () => noop(),
    onDidChange: () => noop(),
    onDidDelete: () => noop(),
    dispose: () => undefined,
  }),
  applyEdit: () => Promise.resolve(true),
});

function matches(filter: any, document: TextDocument): boolean {
  if (typeof filter === "string") return filter === "*" || filter === document.languageId;
  if (filter.language && filter.language !== "*" && filter.language !== document.languageId) return false;
  if (filter.scheme && filter.scheme !== "*" && filter.scheme !== document.uri.scheme) return false;
  return true;
}

export const languages = namespace({
  match: (selector: any, document: TextDocument) =>
    (Array.isArray(selector) ? selector : [selector]).some((f) => matches(f, document)) ? 10 : 0,
  registerInlineCompletionItemProvider: (selector: any, provider: any) => {
    const entry = { selector, provider };
    fake.inlineProviders.push(entry);
    return new Disposable(() => fake.inlineProviders.splice(fake.inlineProviders.indexOf(entry), 1));
  },
  createDiagnosticCollection: () => ({ set: () => undefined, delete: () => undefined, clear: () => undefined, dispose: () => undefined }),
});

export const commands = namespace({
  registerCommand: (id: string, fn: (...args: any[]) => any) => {
    if (fake.commands.has(id)) throw new Error(`command '${id}' already exists`);
    fake.commands.set(id, fn);
    return new Disposable(() => fake.commands.delete(id));
  },
  executeCommand: async (id: string, ...args: any[]) => {
    const fn = fake.commands.get(id);
    if (!fn) throw new Error(`command '${id}' not found`);
    return fn(...args);
  },
  getCommands: async () => [...fake.commands.keys()],
});

export const env = namespace({
  appName: "fake-vscode",
  language: "en",
  machineId: "test",
  sessionId: "test",
  uriScheme: "vscode",
  clipboard: {
    writeText: async (text: string) => {
      fake.clipboard = text;
    },
    readText: async () => fake.clipboard,
  },
  openExternal: async () => true,
});

export const extensions = namespace({ all: [], getExtension: () => undefined });
export const notebooks = namespace({});
export const tests = namespace({});
export const debug = namespace({});
export const scm = namespace({});
export const tasks = namespace({});
export const authentication = namespace({});
export const l10n = namespace({ t: (message: string) => message });
