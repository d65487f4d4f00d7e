"""Process-wide llama.cpp set-up: backend initialisation, log routing and the build's features.

llama.cpp logs through a C callback; ours forwards each line to Python logging (debug
for chatter, warning and error as such). The ctypes callback object is kept in a module
global on purpose: if it were garbage-collected, the next log line would segfault.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp

_logger = logging.getLogger("paddler_trio.llama_cpp")
_init_lock = threading.Lock()
_initialised = False
_multimodal_logs_routed = False

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# llama.cpp's INFO is chatter for us (tensor dumps, timings): it goes to debug.
_GGML_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_GGML_CONTINUE = 5
_pending_line: list[str] = []
_pending_level = [logging.DEBUG]


def _forward_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace")
    if not _pending_line and level != _GGML_CONTINUE:
        _pending_level[0] = _GGML_LEVELS.get(level, logging.DEBUG)
    _pending_line.append(message)
    if not message.endswith("\n"):
        return
    line = "".join(_pending_line).rstrip()
    _pending_line.clear()
    if line:
        _logger.log(_pending_level[0], "%s", line)


_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_log)


def ensure_backend_initialised() -> None:
    """Initialise the llama.cpp backend once per process and route its logs."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _initialised = True


def ensure_multimodal_logs_routed() -> None:
    """Route the logs of llama.cpp's multimodal library (mtmd) like llama.cpp's own: it prints
    its chatter (prompts included) to stderr otherwise. Loads that library: call it only when a
    projector is wanted."""
    global _multimodal_logs_routed
    import llama_cpp.mtmd_cpp as mtmd

    with _init_lock:
        if _multimodal_logs_routed:
            return
        mtmd.mtmd_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        _multimodal_logs_routed = True


def system_info() -> str:
    """llama.cpp's one-line build report: the CPU features compiled in, e.g.
    "CPU : SSE3 = 1 | AVX2 = 1 | ... | OPENMP = 1 | REPACK = 1 |"."""
    ensure_backend_initialised()
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
