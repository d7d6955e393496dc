"""Coverage-guided fuzzing of the HTTP request parser and the WebSocket opening handshake (atheris).

    python tests/fuzz/fuzz_handshake.py -max_total_time=60 CORPUS_DIR

The input is what a client sends before the upgrade (requests back to back),
cut into pieces at points derived from the input.  Allowed: HTTPError (4xx, 5xx)
from RequestParser and websocket_accept; anything else is a crash.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runner  # noqa: E402

targets, atheris = runner.instrumented_targets()


def TestOneInput(data: bytes) -> None:
    targets.handshake_target(data, runner.cuts_for(data))


if __name__ == "__main__":
    runner.main(TestOneInput, targets.HANDSHAKE_SEEDS, atheris)
