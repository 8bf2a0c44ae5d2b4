-- :checkhealth infill
local M = {}

function M.check()
  local health = vim.health
  local infill = require("infill")
  health.start("infill")
  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim 0.10 or newer is needed")
  end
  if vim.lsp.inline_completion and not infill.config.own_client then
    health.ok("ghost text: vim.lsp.inline_completion (built in)")
  else
    health.ok("ghost text: this plugin's own client")
  end
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
  if #clients == 0 then
    health.info("no server running (it starts with the first buffer of an enabled filetype)")
  else
    local s = infill.status()
    health.ok(string.format("server running (client %d): %s%s", clients[1].id, s.status,
      s.message and (": " .. s.message) or ""))
  end
end

return M
