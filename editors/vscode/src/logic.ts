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
