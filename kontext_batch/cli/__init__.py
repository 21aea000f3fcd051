"""The ``kontext-batch`` command: click commands, options and rendering. Thin: it parses, calls
:mod:`kontext_batch.run` or the library, and renders.
"""
