"""Coverage-guided fuzzing of permessage-deflate inflation (atheris).

    python tests/fuzz/fuzz_deflate.py -max_total_time=60 CORPUS_DIR

The input is one compressed message's payload: inflated with
PerMessageDeflate.decompress in pieces (the inflated size must never pass the
limit; allowed: ProtocolError 1007/1009), then sent as RSV1 frames through a
WebSocketConnection with permessage-deflate negotiated (events only).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runner  # noqa: E402

targets, atheris = runner.instrumented_targets()


def TestOneInput(data: bytes) -> None:
    cuts = runner.cuts_for(data)
    out = targets.deflate_target(data, cuts, no_context_takeover=runner.flag(data))
    assert out is None or len(out) <= targets.MAX_MESSAGE
    targets.deflate_frames(data, cuts[:16])


if __name__ == "__main__":
    runner.main(TestOneInput, targets.DEFLATE_SEEDS, atheris)
