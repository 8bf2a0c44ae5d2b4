-- Differences between Neovim 0.10, 0.11 and 0.12 that the plugin papers over.
--
-- 0.11 made LSP client methods colon-calls (client:request(...)); 0.10 only has the dot form
-- (client.request(...)), and the string index functions changed signature in 0.11.

local M = {}

M.nvim_011 = vim.fn.has("nvim-0.11") == 1
M.uv = vim.uv or vim.loop

function M.request(client, method, params, handler, bufnr)
  if M.nvim_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

--- A request that waits for its answer: { err, result }, or nil and "timeout" (or an error).
function M.request_sync(client, method, params, timeout_ms, bufnr)
  if M.nvim_011 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

function M.notify(client, method, params)
  if M.nvim_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if M.nvim_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- Run a server command (an item's `command`): workspace/executeCommand.
function M.exec_cmd(client, command, bufnr)
  if M.nvim_011 and client.exec_cmd then
    return client:exec_cmd(command, { bufnr = bufnr })
  end
  return M.request(client, "workspace/executeCommand",
    { command = command.command, arguments = command.arguments }, function() end, bufnr)
end

--- Length of `s` in UTF-16 code units (what LSP and VS Code count), bytes if `s` is not UTF-8.
function M.utf16_len(s)
  local ok, n
  if M.nvim_011 then
    ok, n = pcall(vim.str_utfindex, s, "utf-16")
  else
    ok, n = pcall(function()
      return select(2, vim.str_utfindex(s))
    end)
  end
  return ok and n or #s
end

--- Byte column in `line` of an LSP character offset in `encoding`.
function M.byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if M.nvim_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  return ok and col or math.min(character, #line)
end

return M
