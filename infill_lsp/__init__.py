"""infill-lsp: inline code completion from a block-diffusion LLM, served over LSP."""

__version__ = "0.1.0"
