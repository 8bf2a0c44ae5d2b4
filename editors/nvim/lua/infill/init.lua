-- infill.nvim: ghost-text completions from infill-lsp (a block-diffusion infilling server).
--
-- Neovim 0.12+ has vim.lsp.inline_completion; on 0.10/0.11 this module is its own client:
-- request on TextChangedI/CursorMovedI (debounced, the previous request cancelled), draw the
-- first line as inline virtual text and the rest as virtual lines, cycle through every
-- candidate of one response, accept all / a word / a line, and keep the suggestion while the
-- user types through it.

local M = {}

M.config = {
  cmd = { "infill-lsp", "serve" },
  filetypes = nil, -- nil: every buffer with a filetype
  debounce_ms = 75,
  own_client = false, -- true: use this plugin's client even where vim.lsp.inline_completion exists (0.12+)
  settings = {}, -- sent as initializationOptions (candidates, maxTokens, steps, languages, model, engineAddress)
  keys = {
    accept = "<M-l>",
    accept_word = "<M-w>",
    accept_line = "<M-j>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
}

local ns = vim.api.nvim_create_namespace("infill")
local state = {
  enabled = true,
  status = "idle",
  items = {}, -- candidates of the last response: { text = insertText, range = LSP range, id = item id }
  index = 1,
  anchor = nil, -- { buf, row, col, line } where the shown items apply
  request = nil, -- { client, id }
  timer = nil,
  requests = 0,
}

local function client_for(buf)
  return vim.lsp.get_clients({ bufnr = buf, name = "infill" })[1]
end

function M.clear()
  vim.api.nvim_buf_clear_namespace(0, ns, 0, -1)
end

local function current()
  return state.items[state.index]
end

-- What the current item adds at the cursor: its insertText minus the rest of the line it replaces.
local function ghost_text()
  local item = current()
  if not item or not state.anchor then
    return nil
  end
  local line = vim.api.nvim_get_current_line()
  local col = vim.api.nvim_win_get_cursor(0)[2]
  local rest = line:sub(col + 1)
  local text = item.text
  if rest ~= "" and text:sub(-#rest) == rest then
    text = text:sub(1, #text - #rest)
  end
  return text
end

function M.render()
  M.clear()
  local text = ghost_text()
  if not text or text == "" or vim.fn.pumvisible() == 1 then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  local hint = #state.items > 1 and string.format(" (%d/%d)", state.index, #state.items) or ""
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], "InfillSuggestion" } })
  end
  local opts = {
    virt_text = { { lines[1], "InfillSuggestion" } },
    virt_text_pos = "inline",
    hl_mode = "combine",
  }
  if #virt_lines > 0 then
    opts.virt_lines = virt_lines
  end
  vim.api.nvim_buf_set_extmark(0, ns, row - 1, col, opts)
  if hint ~= "" then
    vim.api.nvim_buf_set_extmark(0, ns, row - 1, 0, { virt_text = { { hint, "InfillHint" } }, virt_text_pos = "eol" })
  end
  local client = client_for(0)
  if client and current().id then
    client:notify("infill/didShowCompletion", { id = current().id })
  end
end

local function cancel_request()
  if state.request then
    pcall(function()
      state.request.client:cancel_request(state.request.id)
    end)
    state.request = nil
  end
end

function M.dismiss()
  cancel_request()
  state.items, state.index, state.anchor = {}, 1, nil
  M.clear()
end

function M.request(trigger_kind)
  local buf = vim.api.nvim_get_current_buf()
  local client = client_for(buf)
  if not state.enabled or not client then
    return
  end
  cancel_request()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = trigger_kind or 2 }
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local line = vim.api.nvim_get_current_line()
  state.requests = state.requests + 1
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    state.request = nil
    if err or not result then
      return
    end
    local now_row, now_col = unpack(vim.api.nvim_win_get_cursor(0))
    if now_row ~= row or now_col ~= col or vim.api.nvim_get_current_line() ~= line then
      return -- stale: the user moved on
    end
    local items = {}
    for _, item in ipairs(result.items or result) do
      local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
      local arg = item.command and item.command.arguments and item.command.arguments[1]
      table.insert(items, { text = text, range = item.range, id = arg and arg.id, command = item.command })
    end
    state.items, state.index = items, 1
    state.anchor = { buf = buf, row = row, col = col, line = line }
    M.render()
  end, buf)
  if ok then
    state.request = { client = client, id = id }
  end
end

-- Insert `text` at the cursor (the part of the ghost text being accepted) and move past it.
local function insert(text)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row, last_col })
end

local function accept_part(text)
  local full = ghost_text()
  if not full or full == "" then
    return false
  end
  local item = current()
  state.internal_edit = true
  insert(text)
  state.internal_edit = false
  local client = client_for(0)
  if #text >= #full then
    if client and item.command then
      client:exec_cmd(item.command, { bufnr = 0 })
    end
    M.dismiss()
  else
    if client and item.id then
      client:notify("infill/didPartiallyAcceptCompletion", { id = item.id, acceptedLength = #text })
    end
    -- keep the rest: the items now continue after what was accepted
    for _, other in ipairs(state.items) do
      if other.text:sub(1, #text) == text then
        other.text = other.text:sub(#text + 1)
      end
    end
    M.render()
  end
  return true
end

function M.accept()
  local text = ghost_text()
  return text ~= nil and text ~= "" and accept_part(text)
end

function M.accept_word()
  local text = ghost_text()
  if not text or text == "" then
    return false
  end
  local word = text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
  return accept_part(word)
end

function M.accept_line()
  local text = ghost_text()
  if not text or text == "" then
    return false
  end
  local line = text:match("^[^\n]*\n?")
  return accept_part(line)
end

function M.cycle(step)
  if #state.items == 0 then
    return M.request(1)
  end
  state.index = (state.index - 1 + step) % #state.items + 1
  M.render()
end

-- Typing through: the typed character is the next one of the suggestion. Keep it, no request.
local function typed_through()
  local anchor = state.anchor
  if not anchor or #state.items == 0 then
    return false
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  if row ~= anchor.row or col <= anchor.col then
    return false
  end
  local line = vim.api.nvim_get_current_line()
  local typed = line:sub(anchor.col + 1, col)
  local kept = {}
  for _, item in ipairs(state.items) do
    if item.text:sub(1, #typed) == typed and #item.text > #typed then
      table.insert(kept, { text = item.text:sub(#typed + 1), range = item.range, id = item.id, command = item.command })
    end
  end
  if #kept == 0 then
    return false
  end
  state.items, state.index = kept, 1
  state.anchor = { buf = anchor.buf, row = row, col = col, line = line }
  M.render()
  return true
end

local function schedule_request()
  if state.internal_edit then
    return
  end
  if typed_through() then
    return
  end
  M.dismiss()
  if state.timer then
    state.timer:stop()
  end
  state.timer = vim.defer_fn(function()
    state.timer = nil
    if vim.fn.mode():sub(1, 1) == "i" then
      M.request(2)
    end
  end, M.config.debounce_ms)
end

function M.status()
  return { enabled = state.enabled, status = state.status, items = #state.items, index = state.index,
           requests = state.requests, percent = state.percent, message = state.message }
end

local function map(lhs, fn)
  if lhs and lhs ~= "" then
    vim.keymap.set("i", lhs, function()
      if not fn() then
        -- nothing to accept: behave like the key itself
        vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(lhs, true, false, true), "n", false)
      end
    end, { desc = "infill" })
  end
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", M.config, opts or {})
  vim.api.nvim_set_hl(0, "InfillSuggestion", { link = "Comment", default = true })
  vim.api.nvim_set_hl(0, "InfillHint", { link = "NonText", default = true })
  local group = vim.api.nvim_create_augroup("infill", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    callback = function(args)
      local filetypes = M.config.filetypes
      if filetypes and not vim.tbl_contains(filetypes, vim.bo[args.buf].filetype) then
        return
      end
      vim.lsp.start({
        name = "infill",
        cmd = M.config.cmd,
        root_dir = vim.fs.root(args.buf, { ".git" }) or vim.fn.getcwd(),
        init_options = M.config.settings,
        handlers = {
          ["infill/status"] = function(_, result)
            state.status = result and result.state or state.status
            state.percent = result and result.percent
            state.message = result and result.message
          end,
        },
      }, { bufnr = args.buf })
    end,
  })
  vim.api.nvim_create_user_command("InfillToggle", function()
    state.enabled = not state.enabled
    if not state.enabled then
      M.dismiss()
    end
    if vim.lsp.inline_completion and not M.config.own_client then
      vim.lsp.inline_completion.enable(state.enabled)
    end
    vim.notify("infill: " .. (state.enabled and "on" or "off"))
  end, {})
  vim.api.nvim_create_user_command("InfillStatus", function()
    local s = M.status()
    local detail = s.status == "loading" and s.percent and string.format(" %d%%", s.percent)
      or (s.status == "error" and s.message and (": " .. s.message)) or ""
    vim.notify(string.format("infill: %s, server %s%s, %d suggestion(s)", s.enabled and "on" or "off", s.status,
      detail, s.items))
  end, {})
  if vim.lsp.inline_completion and not M.config.own_client then
    -- Neovim 0.12+: the built-in client draws and cycles inline completions itself.
    vim.lsp.inline_completion.enable(true)
    local keys = M.config.keys
    vim.keymap.set("i", keys.accept, function()
      if not vim.lsp.inline_completion.get() then
        return keys.accept
      end
    end, { expr = true, desc = "infill: accept" })
    vim.keymap.set("i", keys.next, function() vim.lsp.inline_completion.select({ count = 1 }) end)
    vim.keymap.set("i", keys.prev, function() vim.lsp.inline_completion.select({ count = -1 }) end)
    return
  end
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, { group = group, callback = schedule_request })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    callback = function()
      local anchor = state.anchor
      local row, col = unpack(vim.api.nvim_win_get_cursor(0))
      if anchor and (row ~= anchor.row or col ~= anchor.col) and vim.api.nvim_get_current_line() == anchor.line then
        schedule_request() -- moved without typing
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, callback = M.dismiss })
  vim.api.nvim_create_autocmd("CompleteChanged", { group = group, callback = M.clear })

  local keys = M.config.keys
  map(keys.accept, M.accept)
  map(keys.accept_word, M.accept_word)
  map(keys.accept_line, M.accept_line)
  map(keys.next, function() M.cycle(1) return true end)
  map(keys.prev, function() M.cycle(-1) return true end)
  map(keys.dismiss, function()
    local had = #state.items > 0
    M.dismiss()
    return had
  end)

end

return M
