-- infill.nvim: ghost-text completions from infill-lsp (a block-diffusion infilling server).
--
-- Neovim 0.11 or newer (tested on 0.11.4); on an older one setup() says so and does nothing.
-- The plugin is its own client: request on TextChangedI/CursorMovedI (debounced, the previous
-- request cancelled), draw the first line as inline virtual text and the rest as virtual lines,
-- cycle through every candidate of one response, accept all / a word / a line, and keep the
-- suggestion while the user types through it.

local M = {}

-- The plugin's version: the same as the server's (infill_lsp.__version__) and the VS Code
-- extension's; a server that reports another one in initialize is pointed out once.
M.version = "0.1.0"

local DEFAULTS = {
  cmd = { "infill-lsp", "serve" },
  filetypes = nil, -- nil: every normal buffer with a filetype; else a list of filetypes
  debounce_ms = 75,
  -- Sent as initializationOptions, and as workspace/didChangeConfiguration when setup() runs again:
  -- candidates, maxTokens, steps, languages, model, engineAddress, showInvalid, ...
  settings = {},
  keys = {
    accept = "<M-l>",
    accept_word = "<M-w>",
    accept_line = "<M-j>",
    next = "<M-]>", -- with no suggestion on screen: ask for one (an Invoked request)
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
}

M.config = vim.deepcopy(DEFAULTS)

local INSTALL_HINT = "install it with `pip install infill-lsp` (or `scripts/setup` in a checkout of infill-lsp) "
  .. "and put it on PATH, or set `cmd` in require('infill').setup()"

local ns = vim.api.nvim_create_namespace("infill")
local api = vim.api

local state = {
  enabled = true,
  status = "idle", -- the server's infill/status: idle, busy, loading, error; or "stopped" (on_server_exit)
  restarting = false, -- M.restart is stopping the server: its exit is no crash
  percent = nil,
  message = nil,
  -- Candidates of the last response, as ghost text at the anchor:
  -- { text = what goes in at the cursor, delete = bytes after the cursor it replaces, id, command }
  items = {},
  index = 1,
  anchor = nil, -- { buf, row, col, line }: where the items apply (cursor row 1-based, byte col)
  request = nil, -- { client, id } of the request in flight
  requests = 0, -- inlineCompletion requests sent (tests read it)
  reported = {}, -- item ids already sent as infill/didShowCompletion
  quiet = nil, -- { buf, tick }: our own full accept; its TextChangedI asks for nothing
  last = nil, -- { buf, tick, row, col } when an insert-mode event was last handled
  -- The last inlineCompletion request, to ask once more when the server turns ready:
  -- { buf, tick, row, col, items = count once answered }
  asked = nil,
  server_version = nil, -- initialize's serverInfo.version
  warned = false,
  version_warned = false,
  old_nvim_warned = false,
}

--- Length of `s` in UTF-16 code units (what LSP and VS Code count), bytes if `s` is not UTF-8.
local function utf16_len(s)
  local ok, n = pcall(vim.str_utfindex, s, "utf-16")
  return ok and n or #s
end

--- Byte column in `line` of an LSP character offset in `encoding`.
local function byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and col or math.min(character, #line)
end

local function client_for(buf)
  return vim.lsp.get_clients({ bufnr = buf, name = "infill" })[1]
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1], pos[2]
end

local function tick(buf)
  return api.nvim_buf_get_changedtick(buf)
end

local timer -- the debounce timer of automatic requests (schedule_request)
local timer_generation = 0 -- bumped by stop_timer: a callback already queued by the timer sees it
local RESTARTS, RESTART_WINDOW_MS = 3, 180000 -- as the VS Code extension: 3 in 3 minutes
local restarted_at = {} -- vim.uv.now() of each automatic restart

--- Forget a scheduled automatic request: an explicit one, or a dismissal, overrides it.
local function stop_timer()
  timer_generation = timer_generation + 1
  if timer then
    timer:stop()
  end
end

--- The server's state as the plugin shows it, and the statusline redrawn to show it.
local function set_status(status, message, percent)
  state.status, state.message, state.percent = status, message, percent
  vim.schedule(function()
    pcall(vim.cmd.redrawstatus, { bang = true })
  end)
end

local function current()
  return state.items[state.index]
end

local function clear()
  if state.anchor and api.nvim_buf_is_valid(state.anchor.buf) then
    api.nvim_buf_clear_namespace(state.anchor.buf, ns, 0, -1)
  end
  api.nvim_buf_clear_namespace(0, ns, 0, -1)
end

--- Tabs drawn as the spaces they will take once inserted at display column `start`.
local function expand_tabs(s, start)
  if not s:find("\t", 1, true) then
    return s
  end
  local ts = vim.bo.tabstop > 0 and vim.bo.tabstop or 8
  local pieces = vim.split(s, "\t", { plain = true })
  local out, width = {}, start
  for i, piece in ipairs(pieces) do
    table.insert(out, piece)
    width = width + vim.fn.strdisplaywidth(piece)
    if i < #pieces then
      local n = ts - width % ts
      table.insert(out, string.rep(" ", n))
      width = width + n
    end
  end
  return table.concat(out)
end

--- Draw the current candidate at the anchor (only while the cursor is there and no popup is open).
function M.render()
  clear()
  local item, anchor = current(), state.anchor
  if not item or not anchor or api.nvim_get_current_buf() ~= anchor.buf or item.text == "" then
    return
  end
  local row, col = cursor()
  if row ~= anchor.row or col ~= anchor.col or vim.fn.pumvisible() == 1 then
    return
  end
  -- Extmarks belong to the buffer: scoped to this window, the ghost text does not also show in
  -- another window on the same buffer (a split). The API is experimental in 0.11: without it,
  -- every such window shows it.
  pcall(api.nvim__ns_set, ns, { wins = { api.nvim_get_current_win() } })
  local lines = vim.split(item.text, "\n", { plain = true })
  local line = api.nvim_get_current_line()
  local start = vim.fn.strdisplaywidth(line:sub(1, col))
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { expand_tabs(lines[i], 0), "InfillSuggestion" } })
  end
  local first = expand_tabs(lines[1], start)
  local opts = { virt_text_pos = "inline", hl_mode = "combine" }
  -- The line's text after the cursor: inline ghost text pushes it right, which is where it ends up
  -- when one line goes in. When the suggestion replaces it, or has several lines (it then ends up
  -- after the last one), the ghost text covers it instead (an overlay padded to its width) and the
  -- part that stays is drawn where accepting puts it.
  -- An overlay does not wrap: where the line's rest or the cover would reach past the window's
  -- edge, the inline drawing stays (the rest then shows on the cursor's line).
  local hint = #state.items > 1 and { string.format(" (%d/%d)", state.index, #state.items), "InfillHint" } or nil
  local tail = line:sub(col + 1)
  if tail ~= "" and (#lines > 1 or item.delete > 0) then
    local kept = line:sub(col + 1 + item.delete)
    local last = #lines > 1 and expand_tabs(lines[#lines] .. kept, 0) or nil
    local cover_text = #lines > 1 and first or expand_tabs(lines[1] .. kept, start)
    local tail_width = vim.fn.strdisplaywidth(tail, start)
    local padded = cover_text .. string.rep(" ", math.max(0, tail_width - vim.fn.strdisplaywidth(cover_text, start)))
    local info = vim.fn.getwininfo(api.nvim_get_current_win())[1]
    local room = info and (info.width - info.textoff) or math.huge
    local widest = math.max(start + vim.fn.strdisplaywidth(padded, start) + (hint and #hint[1] or 0),
      last and vim.fn.strdisplaywidth(last) or 0)
    if widest <= room then
      first = padded
      if last then
        virt_lines[#virt_lines][1][1] = last
      end
      opts.virt_text_pos = "overlay"
    end
  end
  opts.virt_text = { { first, "InfillSuggestion" } }
  if hint and opts.virt_text_pos == "overlay" then
    table.insert(opts.virt_text, hint) -- at the line's end, the overlay would cover it
    hint = nil
  end
  if #virt_lines > 0 then
    opts.virt_lines = virt_lines
  end
  api.nvim_buf_set_extmark(anchor.buf, ns, row - 1, col, opts)
  if hint then
    api.nvim_buf_set_extmark(anchor.buf, ns, row - 1, 0, { virt_text = { hint }, virt_text_pos = "eol" })
  end
  if item.id and not state.reported[item.id] then
    state.reported[item.id] = true
    local client = client_for(anchor.buf)
    if client then
      client:notify("infill/didShowCompletion", { id = item.id })
    end
  end
end

local function cancel_request()
  local request = state.request
  state.request = nil
  if request then
    pcall(function()
      request.client:cancel_request(request.id)
    end)
  end
end

--- Forget the suggestion (and any request in flight).
function M.dismiss()
  stop_timer()
  cancel_request()
  clear()
  state.items, state.index, state.anchor = {}, 1, nil
end

--- An LSP item as ghost text at byte column `col` of `line`, or nil when it cannot be shown there.
local function normalize(raw, row, line, col, encoding)
  local insert = raw.insertText
  if type(insert) == "table" then
    insert = insert.value -- a snippet: shown and inserted as its text
  end
  if type(insert) ~= "string" then
    return nil
  end
  local start_col, end_col = col, col
  if raw.range then
    if raw.range.start.line ~= row - 1 or raw.range["end"].line ~= row - 1 then
      return nil
    end
    start_col = byte_col(line, raw.range.start.character, encoding)
    end_col = byte_col(line, raw.range["end"].character, encoding)
  end
  if start_col > col or end_col < col then
    return nil
  end
  local before = line:sub(start_col + 1, col) -- typed already: the item repeats it
  if insert:sub(1, #before) ~= before then
    return nil
  end
  local text = insert:sub(#before + 1)
  local after = line:sub(col + 1, end_col) -- the rest of the line the item replaces
  local delete = 0
  if after ~= "" then
    if #text >= #after and text:sub(-#after) == after then
      text = text:sub(1, #text - #after) -- it keeps that rest: only the middle is new
    else
      delete = #after
    end
  end
  if text == "" then
    return nil
  end
  local arg = raw.command and raw.command.arguments and raw.command.arguments[1]
  return { text = text, delete = delete, id = type(arg) == "table" and arg.id or nil, command = raw.command }
end

--- Ask the server for suggestions at the cursor. trigger_kind: 1 Invoked, 2 Automatic.
function M.request(trigger_kind)
  local buf = api.nvim_get_current_buf()
  local client = client_for(buf)
  if not state.enabled or not client then
    return false
  end
  stop_timer()
  cancel_request()
  local row, col = cursor()
  local line = api.nvim_get_current_line()
  local at = tick(buf)
  local encoding = client.offset_encoding or "utf-16"
  local params = vim.lsp.util.make_position_params(0, encoding)
  params.context = { triggerKind = trigger_kind or 2 }
  state.requests = state.requests + 1
  local ok, id
  ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    if state.request and state.request.id == id then
      state.request = nil
    end
    if err or not result then
      return
    end
    if api.nvim_get_current_buf() ~= buf or tick(buf) ~= at or vim.fn.mode():sub(1, 1) ~= "i" then
      return -- stale: the user moved on
    end
    local now_row, now_col = cursor()
    if now_row ~= row or now_col ~= col then
      return
    end
    local items = {}
    for _, raw in ipairs(result.items or result) do
      local item = normalize(raw, row, line, col, encoding)
      if item then
        table.insert(items, item)
      end
    end
    if #items == 0 and trigger_kind == 1 then
      api.nvim_echo({ { "infill: no suggestion here", "WarningMsg" } }, false, {})
    end
    state.items, state.index, state.reported = items, 1, {}
    state.anchor = { buf = buf, row = row, col = col, line = line }
    M.render()
  end, buf)
  if ok then
    state.request = { client = client, id = id }
  end
  return ok
end

local function keep_items(typed)
  local kept, index = {}, 1
  for i, item in ipairs(state.items) do
    if #item.text > #typed and item.text:sub(1, #typed) == typed then
      table.insert(kept, { text = item.text:sub(#typed + 1), delete = item.delete, id = item.id, command = item.command })
      if i == state.index then
        index = #kept
      end
    end
  end
  return kept, index
end

--- Insert the start (or all) of the current candidate at the cursor.
local function accept_part(text)
  local item = current()
  if not item or not text or text == "" or not state.anchor or vim.fn.pumvisible() == 1 then
    return false -- nothing to accept, or it is hidden behind the popup menu: the key is itself
  end
  local buf = api.nvim_get_current_buf()
  local row, col = cursor()
  if buf ~= state.anchor.buf or row ~= state.anchor.row or col ~= state.anchor.col then
    return false
  end
  local full = #text >= #item.text
  local lines = vim.split(text, "\n", { plain = true })
  api.nvim_buf_set_text(buf, row - 1, col, row - 1, col + (full and item.delete or 0), lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { last_row, last_col })
  local client = client_for(buf)
  if full then
    state.quiet = { buf = buf, tick = tick(buf) }
    M.dismiss()
    if client and item.command then
      client:exec_cmd(item.command, { bufnr = buf })
    end
  else
    if client and item.id then
      client:notify("infill/didPartiallyAcceptCompletion", { id = item.id, acceptedLength = utf16_len(text) })
    end
    state.items, state.index = keep_items(text)
    state.anchor = { buf = buf, row = last_row, col = last_col, line = api.nvim_get_current_line() }
    M.render()
  end
  return true
end

-- Words as VS Code's "accept word" takes them: leading blanks plus an identifier (non-ASCII
-- bytes count as word characters), or a run of punctuation, or the line break and indentation.
function M._next_word(text)
  return text:match("^[ \t]*[%w_\128-\255]+")
    or text:match("^[ \t]*[^%w_\128-\255%s]+")
    or text:match("^%s+")
    or text
end

function M.accept()
  local item = current()
  return item ~= nil and accept_part(item.text)
end

function M.accept_word()
  local item = current()
  return item ~= nil and accept_part(M._next_word(item.text))
end

function M.accept_line()
  local item = current()
  return item ~= nil and accept_part(item.text:match("^[^\n]*\n?"))
end

--- Next (step 1) or previous (-1) candidate; with none on screen, ask for suggestions.
function M.cycle(step)
  if #state.items == 0 then
    return M.request(1)
  end
  state.index = (state.index - 1 + step) % #state.items + 1
  M.render()
  return true
end

--- The suggestion as it stands (what accept would insert), or nil.
function M.suggestion()
  local item = current()
  return item and item.text or nil
end

-- Typing through: the text typed since the anchor begins the suggestion, and the rest of the
-- line is untouched. Keep the suggestion (its remainder), no request.
local function follow_typing(buf)
  local anchor = state.anchor
  if not anchor or #state.items == 0 or buf ~= anchor.buf then
    return false
  end
  local row, col = cursor()
  if row ~= anchor.row or col < anchor.col then
    return false
  end
  local line = api.nvim_get_current_line()
  local typed = line:sub(anchor.col + 1, col)
  if line ~= anchor.line:sub(1, anchor.col) .. typed .. anchor.line:sub(anchor.col + 1) then
    return false
  end
  if typed ~= "" then
    local kept, index = keep_items(typed)
    if #kept == 0 then
      return false
    end
    state.items, state.index = kept, index
    state.anchor = { buf = buf, row = row, col = col, line = line }
  end
  M.render()
  return true
end

local function schedule_request()
  if not state.enabled then
    return
  end
  timer = timer or vim.uv.new_timer()
  stop_timer()
  local generation = timer_generation
  timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(function()
    if generation == timer_generation and vim.fn.mode():sub(1, 1) == "i" then
      M.request(2)
    end
  end))
end

local function remember_position(buf)
  local row, col = cursor()
  state.last = { buf = buf, tick = tick(buf), row = row, col = col }
end

local function on_text_changed(args)
  local buf = args.buf
  remember_position(buf)
  local quiet = state.quiet
  state.quiet = nil
  if quiet and quiet.buf == buf and quiet.tick == tick(buf) then
    return -- the text our own accept put in
  end
  if follow_typing(buf) then
    return
  end
  M.dismiss()
  if client_for(buf) then
    schedule_request()
  end
end

-- CursorMovedI comes before TextChangedI for a typed character; only a move without an edit
-- (arrow keys, mouse) is handled here.
local function on_cursor_moved(args)
  local buf = args.buf
  local last = state.last
  if last and last.buf == buf and last.tick ~= tick(buf) then
    return -- an edit: TextChangedI follows
  end
  local row, col = cursor()
  if last and last.buf == buf and last.row == row and last.col == col then
    return
  end
  remember_position(buf)
  local anchor = state.anchor
  if anchor and anchor.buf == buf and anchor.row == row and anchor.col == col then
    return M.render()
  end
  M.dismiss()
  if client_for(buf) then
    schedule_request()
  end
end

function M.status()
  return {
    enabled = state.enabled,
    status = state.status,
    percent = state.percent,
    message = state.message,
    items = #state.items,
    index = state.index,
    requests = state.requests,
    pending = state.request ~= nil,
    version = M.version,
    server_version = state.server_version,
    restarts = #restarted_at, -- automatic restarts after a crash, in the last 3 minutes
  }
end

--- A short statusline component: "infill", "infill 2/4", "infill …", "infill 40%", "infill !", "infill off",
--- "infill stopped".
function M.statusline()
  if not state.enabled then
    return "infill off"
  elseif state.status == "loading" then
    return state.percent and string.format("infill %d%%", state.percent) or "infill loading"
  elseif state.status == "busy" then
    return "infill …"
  elseif state.status == "error" then
    return "infill !"
  elseif state.status == "stopped" then
    return "infill stopped"
  elseif #state.items > 1 then
    return string.format("infill %d/%d", state.index, #state.items)
  end
  return "infill"
end

local function status_message()
  local s = M.status()
  local detail = ""
  if s.status == "loading" and s.percent then
    detail = string.format(" %d%%", s.percent)
  elseif (s.status == "error" or s.status == "stopped") and s.message then
    detail = ": " .. s.message
  end
  return string.format("infill: %s, server %s%s, %d suggestion(s)", s.enabled and "on" or "off", s.status, detail, s.items)
end

--- `s` without the characters a suggestion must never draw or insert: control characters other
--- than tab and line feed (C0, DEL, C1). The server leaves them out too; this is defence in depth.
function M._printable(s)
  return (s:gsub("[%z\1-\8\11-\31\127]", ""):gsub("\194[\128-\159]", ""))
end

--- An inlineCompletion answer with the control characters taken out of the text each item adds
--- (`at`: the cursor's line and byte column when it was asked for). The document's own text an
--- item repeats, before the cursor within its range and the rest of the line after it, is kept
--- as it is. Items that add nothing once cleaned are dropped.
local function printable_answer(result, at, encoding)
  local list = result.items or result
  local kept = {}
  for _, raw in ipairs(list) do
    local insert = type(raw.insertText) == "table" and raw.insertText.value or raw.insertText
    if type(insert) == "string" then
      local before, after = "", ""
      local range = raw.range
      if range and range.start.line == at.row and range["end"].line == at.row then
        local first = byte_col(at.line, range.start.character, encoding)
        local last = byte_col(at.line, range["end"].character, encoding)
        if first <= at.col and at.col <= last then
          before, after = at.line:sub(first + 1, at.col), at.line:sub(at.col + 1, last)
        end
      end
      local head, tail = insert:sub(1, #before), #after > 0 and insert:sub(-#after) or ""
      if #insert < #before + #after or head ~= before or tail ~= after then
        before, after = "", "" -- it replaces that text: all of it is new
      end
      local middle = M._printable(insert:sub(#before + 1, #insert - #after))
      if middle ~= "" or #insert == #before + #after then
        if type(raw.insertText) == "table" then
          raw.insertText.value = before .. middle .. after
        else
          raw.insertText = before .. middle .. after
        end
        table.insert(kept, raw)
      end
    else
      table.insert(kept, raw)
    end
  end
  if result.items then
    result.items = kept
    return result
  end
  return kept
end

--- The server's RPC client (what `cmd` starts or connects to), with every inlineCompletion answer
--- made printable before anything in the editor sees it (this plugin, or vim.lsp.buf_request).
local function printable_rpc(rpc)
  local request = rpc.request
  local encoding = "utf-16"
  rpc.request = function(method, params, callback, notify_reply_callback)
    if method == "initialize" and callback then
      local on_initialize = callback
      callback = function(err, result, ...)
        local capabilities = type(result) == "table" and result.capabilities or {}
        encoding = capabilities.positionEncoding or "utf-16"
        return on_initialize(err, result, ...)
      end
    elseif method == "textDocument/inlineCompletion" and callback and params and params.position then
      local buf = vim.uri_to_bufnr(params.textDocument.uri)
      local row = params.position.line
      local line = api.nvim_buf_is_loaded(buf) and api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
      local at = { row = row, line = line, col = byte_col(line, params.position.character, encoding) }
      local asked = { buf = buf, tick = api.nvim_buf_is_loaded(buf) and tick(buf) or -1, row = row + 1, col = at.col }
      state.asked = asked
      local on_answer = callback
      callback = function(err, result, ...)
        if type(result) == "table" then
          result = printable_answer(result, at, encoding)
        end
        asked.items = type(result) == "table" and #(result.items or result) or 0
        return on_answer(err, result, ...)
      end
    end
    return request(method, params, callback, notify_reply_callback)
  end
  return rpc
end

--- `cmd` for vim.lsp.start: the configured command (or RPC client factory), through printable_rpc.
local function server_cmd(cmd)
  return function(dispatchers, config)
    if type(cmd) == "function" then
      return printable_rpc(cmd(dispatchers, config))
    end
    config = config or {}
    return printable_rpc(vim.lsp.rpc.start(cmd, dispatchers, {
      cwd = config.cmd_cwd,
      env = config.cmd_env,
      detached = config.detached,
    }))
  end
end

--- The server turned ready (loading -> idle). What it answered while it loaded was nothing: the
--- request of that time is sent once more, if the user is still in insert mode where it was made
--- (nothing typed, the cursor not moved), so the first suggestion does not wait for more typing.
local function ask_again()
  local asked = state.asked
  if not asked or (asked.items or 0) > 0 or not state.enabled then
    return
  end
  state.asked = nil -- once
  local buf = api.nvim_get_current_buf()
  if vim.fn.mode():sub(1, 1) ~= "i" or buf ~= asked.buf or tick(buf) ~= asked.tick then
    return
  end
  local row, col = cursor()
  if row ~= asked.row or col ~= asked.col then
    return
  end
  M.request(2)
end

--- initialize's serverInfo: a server of another version than this plugin is pointed out once.
local function check_version(info)
  local version = type(info) == "table" and info.version or nil
  if type(version) ~= "string" then
    return
  end
  state.server_version = version
  if version ~= M.version and not state.version_warned then
    state.version_warned = true
    vim.notify(string.format("infill: the server is infill-lsp %s but this plugin is %s; update them together "
      .. "(pip install -U infill-lsp, and the plugin from the same release)", version, M.version), vim.log.levels.WARN)
  end
end

local on_server_exit -- below: what a server that stops leaves behind, and its restart

--- One server serves every project: a buffer of a project it has not seen adds that project's root
--- to its workspace folders (repository context and the definition index cover them), as
--- `vim.lsp.buf.add_workspace_folder` would.
local waiting_roots = {} -- roots of buffers that joined a client before it was initialized (sent by on_init)

local function add_workspace_folder(client, root)
  if not root then
    return
  elseif not client.initialized then
    waiting_roots[root] = true
    return
  end
  for _, folder in ipairs(client.workspace_folders or {}) do
    if folder.name == root then
      return
    end
  end
  local folder = { uri = vim.uri_from_fname(root), name = root }
  client:notify("workspace/didChangeWorkspaceFolders", { event = { added = { folder }, removed = {} } })
  client.workspace_folders = client.workspace_folders or {}
  table.insert(client.workspace_folders, folder)
end

local function attach(buf)
  if not api.nvim_buf_is_valid(buf) or vim.bo[buf].buftype ~= "" then
    return
  end
  local filetype = vim.bo[buf].filetype
  local filetypes = M.config.filetypes
  if filetype == "" or (filetypes and not vim.tbl_contains(filetypes, filetype)) then
    return
  end
  local cmd = M.config.cmd
  if type(cmd) == "table" and vim.fn.executable(cmd[1]) ~= 1 then
    if not state.warned then
      state.warned = true
      -- Not from inside the FileType autocommand: an error message there (opening a file with
      -- `nvim file.py`) is thrown as an exception and shown as a Lua error with a stack traceback.
      local message = string.format("infill: the server `%s` was not found; %s", cmd[1], INSTALL_HINT)
      vim.schedule(function()
        vim.notify(message, vim.log.levels.ERROR)
      end)
    end
    return
  end
  vim.lsp.start({
    name = "infill",
    cmd = server_cmd(cmd),
    root_dir = vim.fs.root(buf, { ".git" }) or vim.fn.getcwd(),
    init_options = M.config.settings,
    on_exit = function(code, signal, client_id)
      on_server_exit(code, signal, client_id)
    end,
    on_init = function(client, result)
      if state.status == "error" or state.status == "stopped" then -- started again (on_server_exit)
        set_status("idle", nil, nil)
      end
      local roots = vim.tbl_keys(waiting_roots)
      waiting_roots = {}
      for _, root in ipairs(roots) do
        add_workspace_folder(client, root)
      end
      check_version(type(result) == "table" and result.serverInfo or nil)
    end,
    handlers = {
      ["infill/status"] = function(_, result)
        if type(result) == "table" then
          local was = state.status
          set_status(result.state or state.status, result.message, result.percent)
          if was == "loading" and state.status == "idle" then
            vim.schedule(ask_again)
          end
        end
      end,
    },
  }, {
    bufnr = buf,
    -- One server for the whole editor (it is not tied to a workspace, and holds a model).
    reuse_client = function(client, config)
      if client.name ~= config.name or client:is_stopped() then
        return false -- a stopping one: the buffer waits for the next (on_server_exit, M.restart)
      end
      add_workspace_folder(client, config.root_dir)
      return true
    end,
  })
end

--- Attach every loaded buffer with a filetype that has no server (starting one if none runs).
local function attach_all()
  for _, buf in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(buf) and vim.bo[buf].filetype ~= "" and not client_for(buf) then
      attach(buf)
    end
  end
end

--- Call `done(true)` once none of the clients `ids` is in Neovim's list any more (it drops an exited
--- client a few loop turns later), or `done(false)` after `timeout_ms`; `step(waited, left)` runs on
--- each look before that.
local function when_gone(ids, timeout_ms, done, step)
  local waited = 0
  local function look()
    local left = vim.tbl_filter(function(id)
      return vim.lsp.get_client_by_id(id) ~= nil
    end, ids)
    if #left == 0 or waited >= timeout_ms then
      return done(#left == 0)
    end
    if step then
      step(waited, left)
    end
    waited = waited + 50
    vim.defer_fn(look, 50)
  end
  look()
end

--- The server stopped. Asked to (`:InfillRestart`, Neovim quitting, a plain SIGTERM: code 0 or
--- signal 15, as Neovim's own client reads it) it stays stopped; otherwise it crashed: the status
--- says so and it is started again for the open buffers, at most RESTARTS times in RESTART_WINDOW_MS.
on_server_exit = function(code, signal, client_id)
  vim.schedule(function()
    M.dismiss()
    if state.restarting or vim.v.exiting ~= vim.NIL then
      return
    end
    if code == 0 and (signal == 0 or signal == 15) then
      return set_status("stopped", "the server was stopped (:InfillRestart starts it)", nil)
    end
    local message = string.format("the server stopped (exit code %d, signal %d)", code, signal)
    local now = vim.uv.now()
    restarted_at = vim.tbl_filter(function(t)
      return now - t < RESTART_WINDOW_MS
    end, restarted_at)
    if #restarted_at >= RESTARTS then
      message = message .. string.format("; not restarted after %d restarts in 3 minutes (:InfillRestart starts it)",
        RESTARTS)
      set_status("error", message, nil)
      return vim.notify("infill: " .. message, vim.log.levels.ERROR)
    end
    set_status("error", message, nil)
    table.insert(restarted_at, now)
    when_gone({ client_id }, 5000, attach_all)
  end)
end

--- Stop the server and start one again for the open buffers (`:InfillRestart`). One that does not
--- answer shutdown within 2 s is terminated; one still there after 5 s is reported.
function M.restart()
  M.dismiss()
  restarted_at = {}
  local clients = vim.lsp.get_clients({ name = "infill" })
  local ids = vim.tbl_map(function(client)
    return client.id
  end, clients)
  state.restarting = true
  for _, client in ipairs(clients) do
    client:stop()
  end
  when_gone(ids, 5000, function(gone)
    state.restarting = false
    if not gone then
      return set_status("error", "the server did not stop (:InfillRestart tries again)", nil)
    end
    set_status("idle", nil, nil)
    attach_all()
  end, function(waited, left)
    if waited == 2000 then
      for _, id in ipairs(left) do
        local client = vim.lsp.get_client_by_id(id)
        if client and client.rpc then
          pcall(client.rpc.terminate)
        end
      end
    end
  end)
end

function M.toggle()
  state.enabled = not state.enabled
  if not state.enabled then
    M.dismiss()
  end
  vim.notify("infill: " .. (state.enabled and "on" or "off"))
end

-- A key that does its job when there is a suggestion, and is itself otherwise.
local function map(lhs, fn, desc)
  if lhs and lhs ~= "" then
    vim.keymap.set("i", lhs, function()
      if not fn() then
        api.nvim_feedkeys(api.nvim_replace_termcodes(lhs, true, false, true), "n", false)
      end
    end, { desc = "infill: " .. desc })
  end
end

local function setup_client(group)
  api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, { group = group, callback = on_text_changed })
  api.nvim_create_autocmd("CursorMovedI", { group = group, callback = on_cursor_moved })
  api.nvim_create_autocmd("InsertEnter", {
    group = group,
    callback = function(args)
      remember_position(args.buf)
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, callback = M.dismiss })
  -- The popup menu hides the suggestion; it comes back when the menu closes without a change.
  api.nvim_create_autocmd("CompleteChanged", { group = group, callback = clear })
  api.nvim_create_autocmd("CompleteDone", {
    group = group,
    callback = function()
      vim.schedule(function()
        if vim.fn.mode():sub(1, 1) == "i" then
          M.render()
        end
      end)
    end,
  })
  local keys = M.config.keys
  map(keys.accept, M.accept, "accept")
  map(keys.accept_word, M.accept_word, "accept word")
  map(keys.accept_line, M.accept_line, "accept line")
  map(keys.next, function() return M.cycle(1) end, "next candidate")
  map(keys.prev, function() return M.cycle(-1) end, "previous candidate")
  map(keys.dismiss, function()
    local had = #state.items > 0
    M.dismiss()
    return had
  end, "dismiss")
end

--- Whether this Neovim is one the plugin runs on (0.11 or newer), and its version ("0.11.4").
function M._nvim_version()
  local v = vim.version()
  return v.major > 0 or v.minor >= 11, string.format("%d.%d.%d", v.major, v.minor, v.patch)
end

function M.setup(opts)
  local supported, version = M._nvim_version()
  if not supported then
    -- The plugin uses 0.11's LSP client methods (client:request, client:exec_cmd, ...): say so, once.
    if not state.old_nvim_warned then
      state.old_nvim_warned = true
      vim.notify("infill: Neovim 0.11 or newer is needed (this is " .. version .. ")", vim.log.levels.WARN)
    end
    return
  end
  local again = M._set_up
  M._set_up = true
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(DEFAULTS), opts or {})
  if opts and opts.settings then
    M.config.settings = opts.settings -- replace, so that keys can be dropped
  end

  local function highlights()
    api.nvim_set_hl(0, "InfillSuggestion", { link = "Comment", default = true })
    api.nvim_set_hl(0, "InfillHint", { link = "NonText", default = true })
  end
  highlights()

  local group = api.nvim_create_augroup("infill", { clear = true })
  api.nvim_create_autocmd("ColorScheme", { group = group, callback = highlights })
  api.nvim_create_autocmd("FileType", {
    group = group,
    callback = function(args)
      attach(args.buf)
    end,
  })

  api.nvim_create_user_command("InfillToggle", M.toggle, { desc = "infill: suggestions on/off" })
  api.nvim_create_user_command("InfillRestart", M.restart, { desc = "infill: stop the server and start it again" })
  api.nvim_create_user_command("InfillStatus", function()
    vim.notify(status_message())
  end, { desc = "infill: server state" })
  api.nvim_create_user_command("InfillStats", function()
    local client = client_for(0) or vim.lsp.get_clients({ name = "infill" })[1]
    if not client then
      return vim.notify("infill: no server running", vim.log.levels.WARN)
    end
    client:request("infill/stats", {}, function(err, result)
      vim.notify(err and ("infill: " .. tostring(err.message)) or ("infill: " .. vim.inspect(result)))
    end, 0)
  end, { desc = "infill: the server's counters and last timings" })

  setup_client(group)

  -- Buffers opened before setup() (lazy loading); a second setup() updates running servers.
  attach_all()
  if again then
    for _, client in ipairs(vim.lsp.get_clients({ name = "infill" })) do
      client:notify("workspace/didChangeConfiguration", { settings = { infill = M.config.settings } })
    end
  end
end

return M
