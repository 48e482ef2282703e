"""Long-context data construction harness.

Folders follow the data flow: ``data`` (corpus, retrieval) → ``construction`` (scoring,
screening, the stage driver, stage datasets) → ``training`` → ``evaluation`` → ``experiments``
(compare, study, tune, report, dashboard) → ``cli``; ``api`` is the plugins' interface and
``layout`` names every output path (docs/architecture.md).
"""
__version__ = "0.1.0"

from harness import _compat

_compat.install()
