-- Driven by tests/test_neovim.py: nvim --headless -l neovim_complete.lua PYTHON OUT_JSON NOTE_MD
-- Starts `nextword serve` through vim.lsp, types into a Markdown buffer, asks for completion at the
-- cursor and accepts the first item the way a completion plugin would (applying its textEdit).
local python, out, note = arg[1], arg[2], arg[3]
local result = {}

local function finish()
  local file = assert(io.open(out, "w"))
  file:write(vim.json.encode(result))
  file:close()
  vim.cmd("qall!")
end

local ok, err = xpcall(function()
  vim.cmd.edit(note)  -- a new Markdown file
  local client_id = assert(vim.lsp.start({ name = "nextword", cmd = { python, "-m", "nextword", "serve" },
                                           root_dir = vim.fn.getcwd(),
                                           flags = { debounce_text_changes = 0 } }))  -- each keystroke sent
  local client = assert(vim.lsp.get_client_by_id(client_id))
  result.attached = vim.wait(30000, function() return client.initialized end, 50)

  -- Wait for the model: the status command names it once loaded.
  result.loaded = vim.wait(120000, function()
    local reply = client:request_sync("workspace/executeCommand", { command = "nextword.status" }, 10000, 0)
    return reply ~= nil and reply.result ~= nil and reply.result.model ~= vim.NIL
  end, 200)

  vim.api.nvim_feedkeys("iThe capital of France is Pa", "xt", false)  -- typed: a didChange per keystroke
  -- Feeding keys ends Insert mode, which moves the cursor back one; put it after the "Pa" again.
  vim.o.virtualedit = "onemore"
  vim.api.nvim_win_set_cursor(0, { 1, #vim.api.nvim_get_current_line() })
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  local reply = client:request_sync("textDocument/completion", params, 60000, 0)
  local items = reply.result.items
  result.labels = vim.tbl_map(function(item) return item.label end, items)
  vim.lsp.util.apply_text_edits({ items[1].textEdit }, vim.api.nvim_get_current_buf(), client.offset_encoding)
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  client:stop()
end, debug.traceback)
if not ok then result.error = err end
finish()
