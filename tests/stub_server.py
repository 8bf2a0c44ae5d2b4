"""`infill-lsp serve` with a stub engine whose candidates the test chooses: the real server (pygls,
document sync, windowing, cleaning, validation, ranking, the reply), only the model replaced.

    python stub_server.py '{"candidates": ["x + 1\\ufffd", "y"]}' --log-level INFO serve [...]

Every request gets the same candidates, best first (scores -0.01, -0.02, ...), whatever the prefix,
suffix or budget; the arguments after the JSON are `infill-lsp`'s own command line. For tests where
the model's output is beside the point (or must be exact, e.g. characters no suggestion may carry),
where the random fixture model gives whatever it gives. "delay": seconds each request takes after the
engine's look at the cancel token (the window where only the server can notice it went stale).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infill_lsp.lsp import server as server_module  # noqa: E402
from infill_lsp.types import Candidate, EngineInfo, InfillResult  # noqa: E402

script = json.loads(sys.argv[1])


class StubEngine:
    info = EngineInfo(model="stub", backend="test")

    def __init__(self, texts: list[str]):
        self.texts = texts

    def infill(self, request, cancel=None):
        if cancel is not None:
            cancel.raise_if_cancelled()
        time.sleep(script.get("delay", 0.0))
        return InfillResult(candidates=[Candidate(text=text, score=-0.01 * (i + 1), tokens=len(text))
                                        for i, text in enumerate(self.texts)])

    def close(self) -> None:
        pass


def load_stub(config, progress=None):
    if progress is not None:
        progress("ready", 100)
    return StubEngine(script["candidates"])


server_module.load_engine = load_stub

if __name__ == "__main__":
    from infill_lsp.cli import main

    sys.exit(main(sys.argv[2:]))
