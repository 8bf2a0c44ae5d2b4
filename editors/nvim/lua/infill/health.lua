-- :checkhealth infill
--
-- The plugin's own checks (Neovim, the server command), then the checks of `infill-lsp doctor`
-- (model, device, engine, grammars, ...): from the running server (the `infill/health` request,
-- which also says what its engine is doing), or, with no server running, from `doctor --json` run
-- with the plugin's `cmd`.
local M = {}

local TIMEOUT_MS = 30000 -- the server gives up on its checks after 20 s

--- One doctor check ({ name, state = ok | warn | fail, detail, fix }) as a health line.
local function report(check)
  local health = vim.health
  if type(check) ~= "table" then
    return
  end
  local text = tostring(check.name) .. ": " .. tostring(check.detail)
  local advice = type(check.fix) == "string" and check.fix ~= "" and { check.fix } or nil
  if check.state == "ok" then
    health.ok(text)
  elseif check.state == "warn" then
    health.warn(text, advice)
  else
    health.error(text, advice)
  end
end

--- `cmd` with `serve` (and its transport flags) replaced by `doctor --json`, and the model and
--- engine the settings name (the server gets them in initializationOptions); nil if it has no `serve`.
function M._doctor_cmd(cmd, settings)
  if type(cmd) ~= "table" then
    return nil
  end
  local out, serve, skip = {}, false, false
  for _, arg in ipairs(cmd) do
    if skip then
      skip = false
    elseif not serve and arg == "serve" then
      serve = true
      vim.list_extend(out, { "doctor", "--json" })
    elseif serve and arg == "--tcp" then
      skip = true
    elseif not (serve and (arg == "--stdio" or arg:match("^%-%-tcp="))) then
      table.insert(out, arg)
    end
  end
  if not serve then
    return nil
  end
  settings = settings or {}
  if type(settings.model) == "string" and settings.model ~= "" and not vim.tbl_contains(out, "--model") then
    vim.list_extend(out, { "--model", settings.model })
  end
  if type(settings.engineAddress) == "string" and settings.engineAddress ~= "" and not vim.tbl_contains(out, "--engine") then
    vim.list_extend(out, { "--engine", settings.engineAddress })
  end
  return out
end

local function server_checks(client, infill)
  local health = vim.health
  local buf = next(client.attached_buffers or {}) or 0
  local ok, response, why = pcall(client.request_sync, client, "infill/health", vim.empty_dict(), TIMEOUT_MS, buf)
  if not ok or not response then
    health.error("the server did not answer infill/health: " .. tostring(ok and why or response),
      { "see :LspLog; :InfillRestart, or run `infill-lsp doctor` in a terminal" })
  elseif response.err then
    health.warn("the server does not answer infill/health: " .. tostring(response.err.message),
      { "update infill-lsp to " .. infill.version .. " (pip install -U infill-lsp)" })
  else
    for _, check in ipairs(response.result or {}) do
      report(check)
    end
  end
end

local function local_checks(infill)
  local health = vim.health
  local cmd = M._doctor_cmd(infill.config.cmd, infill.config.settings)
  if not cmd or vim.fn.executable(cmd[1]) ~= 1 or not vim.system then
    health.info("no server running: its checks show here once it runs (open a file of an enabled filetype)")
    return
  end
  health.info("no server running: `" .. table.concat(cmd, " ") .. "`")
  local done = vim.system(cmd, { text = true }):wait(TIMEOUT_MS)
  local ok, checks = pcall(vim.json.decode, done.stdout or "")
  if not ok or type(checks) ~= "table" then
    local err = vim.trim(done.stderr or "")
    health.error("infill-lsp doctor did not run (exit " .. tostring(done.code) .. ")"
      .. (err ~= "" and (": " .. err:sub(-500)) or ""), { "run it in a terminal: " .. table.concat(cmd, " ") })
    return
  end
  for _, check in ipairs(checks) do
    report(check)
  end
end

function M.check()
  local health = vim.health
  local infill = require("infill")
  health.start("infill")
  local supported, version = infill._nvim_version()
  if not supported then
    -- setup() did nothing here: no server, no checks to run
    health.error("Neovim 0.11 or newer is needed (this is " .. version .. ")",
      { "update Neovim (the plugin is tested on 0.11.4)" })
    return
  end
  health.ok("Neovim " .. version .. ", plugin " .. infill.version)
  local cmd = infill.config.cmd
  if type(cmd) == "table" then
    if vim.fn.executable(cmd[1]) == 1 then
      health.ok("server: " .. table.concat(cmd, " "))
    else
      health.error("server `" .. cmd[1] .. "` not found",
        { "pip install infill-lsp (or scripts/setup in a checkout), or set `cmd` in require('infill').setup()" })
    end
  end
  local clients = vim.lsp.get_clients({ name = "infill" })
  local s = infill.status()
  if #clients == 0 and (s.status == "error" or s.status == "stopped") then
    -- it ran and stopped (crashed past the restart limit, or stopped on purpose)
    health.error("no server running: " .. (s.message or s.status), { ":InfillRestart starts it again; :LspLog says why it stopped" })
  elseif #clients == 0 then
    health.info("no server running (it starts with the first buffer of an enabled filetype)")
  else
    health.ok(string.format("server running (client %d): %s%s", clients[1].id, s.status,
      s.message and (": " .. s.message) or ""))
    if s.server_version and s.server_version ~= infill.version then
      health.warn("the server is infill-lsp " .. s.server_version .. ", the plugin " .. infill.version,
        { "update them together: pip install -U infill-lsp, and the plugin from the same release" })
    end
  end

  health.start("infill: infill-lsp doctor")
  if #clients > 0 then
    server_checks(clients[1], infill)
  else
    local_checks(infill)
  end
end

return M
