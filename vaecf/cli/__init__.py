"""The Typer command-line interface: thin commands that build settings and call the library."""

import os
import signal
import threading

# Ctrl-C while the CLI is still importing (Typer, Rich, pydantic: ~0.3 s) must not print a
# traceback: exit 130 at once. main() puts Python's own handler back before any work starts.
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
