"""Operator tools, each run as a script (python tools/NAME.py); modules shared between them live here too."""
