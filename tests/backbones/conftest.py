"""Backbone tests: the repository root on ``sys.path``, so ``tests.fixtures.plugin_family`` imports by the
same name here, in subprocesses and on Ray workers (a plugin is always imported under one module name)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
