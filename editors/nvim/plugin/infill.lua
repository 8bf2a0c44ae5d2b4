-- Loaded by Neovim for lazy.nvim and other plugin managers; nothing starts until
-- require("infill").setup({...}) is called from the user's config.
if vim.g.loaded_infill then
  return
end
vim.g.loaded_infill = true
