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
};

/** The settings object the server reads from initializationOptions and didChangeConfiguration. */
export function serverSettings(s: Settings): Record<string, unknown> {
  const out: Record<string, unknown> = {
    candidates: s.candidates,
    invokedCandidates: Math.max(s.candidates, 8),
    maxTokens: s.maxTokens,
    steps: s.steps,
    languages: s.languages,
    showInvalid: s.showInvalid,
  };
  if (s.engineAddress) out.engineAddress = s.engineAddress;
  if (s.model) out.model = s.model;
  return out;
}

export type ServerState = "idle" | "busy" | "loading" | "error" | "off";

export function statusText(state: ServerState, detail?: string, percent?: number): string {
  switch (state) {
    case "busy":
      return "$(sync~spin) infill";
    case "loading":
      return `$(loading~spin) infill: loading${percent !== undefined ? ` ${percent}%` : ""}`;
    case "error":
      return "$(error) infill";
    case "off":
      return "$(circle-slash) infill";
    default:
      return "$(sparkle) infill";
  }
}

export function statusTooltip(state: ServerState, detail?: string): string {
  const base = { idle: "ready", busy: "thinking", loading: "loading the model", error: "error", off: "disabled" }[state];
  return detail ? `infill-lsp: ${base}: ${detail}` : `infill-lsp: ${base}`;
}

export function missingServerMessage(path: string): string {
  return (
    `infill-lsp: the server "${path}" was not found. Install it with ` +
    "`scripts/setup` in a checkout (or `pip install infill-lsp`) and set `infill.serverPath` to its path."
  );
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

/** The suggestion on screen, as far as the stable API lets the extension know (the first item). */
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
  if (edit.text.length < 2 || edit.text.length >= shown.text.length) return undefined;
  return shown.text.startsWith(edit.text) ? edit.text.length : undefined;
}

/** Where the rest of the suggestion stands after `accepted` characters of it went in. */
export function advance(shown: Shown, accepted: string): Shown {
  const lines = accepted.split("\n");
  const line = shown.line + lines.length - 1;
  const character = (lines.length === 1 ? shown.character : 0) + lines[lines.length - 1].length;
  return { ...shown, line, character, text: shown.text.slice(accepted.length) };
}
