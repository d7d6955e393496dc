"""Coverage-guided fuzzing of FrameParser and WebSocketConnection.receive_data (atheris).

    python tests/fuzz/fuzz_frames.py -max_total_time=60 CORPUS_DIR

The input is a byte stream from a client, cut into pieces at points derived from
the input; with or without permessage-deflate negotiated.  Allowed: ProtocolError
from the parser, events from the connection; anything else is a crash.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runner  # noqa: E402

targets, atheris = runner.instrumented_targets()


def TestOneInput(data: bytes) -> None:
    targets.frames_target(data, runner.cuts_for(data), deflate=runner.flag(data))


if __name__ == "__main__":
    runner.main(TestOneInput, targets.FRAME_SEEDS, atheris)
