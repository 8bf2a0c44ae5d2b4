"""The commands a newcomer runs first."""

import json
import subprocess
import sys

from conftest import ROOT, TINY_MODEL


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "infill_lsp", "--log-level", "ERROR", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_complete_prints_ranked_candidates_and_timings():
    out = run("complete", "fixtures/samples/fib.py:9:12", "--model", str(TINY_MODEL), "--seed", "1", "-v")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("fixtures/samples/fib.py:9:12  language=python")
    assert "raw candidates from the engine:" in out.stdout
    assert any(line.startswith("timings (ms): tokenize") and "denoise" in line for line in lines)


def test_complete_with_a_bad_target_says_why_without_a_traceback():
    out = run("complete", "fixtures/samples/fib.py:999:1", "--model", str(TINY_MODEL))
    assert out.returncode != 0 and "has no line 999" in out.stderr and "Traceback" not in out.stderr
    out = run("complete", "no-such-file.py:1:1", "--model", str(TINY_MODEL))
    assert out.returncode != 0 and "cannot read" in out.stderr
    out = run("complete", "fixtures/samples/fib.py:9:12", "--model", "/nonexistent")
    assert out.returncode == 1 and "never downloads" in out.stderr and "Traceback" not in out.stderr


def test_bench_prints_both_tables(tmp_path):
    report = tmp_path / "bench.json"
    out = run("bench", "--model", str(TINY_MODEL), "--candidates", "1,2", "--repeat", "1", "--steps", "2",
              "--max-tokens", "4", "--big-file-lines", "300", "--json", str(report), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "pipeline latency (ms, p50 / p95)" in out.stdout and "LSP overhead, 300-line file" in out.stdout
    data = json.loads(report.read_text())
    assert [row["candidates"] for row in data["pipeline"]] == [1, 2]
    assert data["lsp_overhead"]["n"] == 6 and data["lsp_overhead"]["server_overhead_p95"] >= 0
    # each figure says what it covers: the server's row is its handler, without JSON-RPC's parsing and
    # encoding (those are in the editor's round trip), and no row claims "request in -> reply out"
    lines = out.stdout.splitlines()
    assert "request in -> reply out" not in out.stdout
    server = next(line for line in lines if line.startswith("| server handler |"))
    assert data["lsp_overhead"]["handler_p50"] >= data["lsp_overhead"]["server_overhead_p50"]
    assert any(line.startswith("  server handler: ") and "no JSON-RPC parsing or encoding" in line for line in lines), server
    assert any(line.startswith("  editor round trip: ") and "JSON-RPC parsing and encoding on both ends" in line
               for line in lines)
    for column in ("tokenize", "encode", "denoise", "clean+validate", "rank", "non-model", "total"):
        assert any(line.startswith(f"  {column}: ") for line in lines), column
