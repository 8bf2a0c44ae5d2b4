"""One version: the server (what initialize's serverInfo says), the Python package, the VS Code
extension and the Neovim plugin. The editors warn once when the server they talk to differs."""

import json
import re
import tomllib

from infill_lsp import __version__
from lsp_harness import ROOT


def test_the_server_and_both_editor_plugins_carry_one_version():
    package = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text())
    lock = json.loads((ROOT / "editors" / "vscode" / "package-lock.json").read_text())
    lua = re.search(r'^M\.version = "([^"]+)"', (ROOT / "editors" / "nvim" / "lua" / "infill" / "init.lua").read_text(),
                    re.MULTILINE)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert lua, "editors/nvim/lua/infill/init.lua has no M.version"
    versions = {"infill_lsp.__version__": __version__, "pyproject.toml": project,
                "editors/vscode/package.json": package["version"], "editors/vscode/package-lock.json": lock["version"],
                "editors/nvim/lua/infill/init.lua": lua.group(1)}
    assert len(set(versions.values())) == 1, versions

