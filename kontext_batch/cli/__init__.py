"""The ``kontext-batch`` command. Thin: it parses, calls :mod:`kontext_batch.run` or the library, and
renders. Nothing else in the package imports it.

- :mod:`.commands`: the click group, its commands and :func:`main`, the console script;
- :mod:`.serve`: the commands that serve until stopped (``worker``, ``webhooks``);
- :mod:`.options`: options shared by several commands, and the ``duration`` type;
- :mod:`.context`: what each command gets from the group (settings, a runtime on a checked Redis);
- :mod:`.watch`: queueing a run and following it, and what Ctrl-C does meanwhile;
- :mod:`.progress`: the live display, plain lines or JSON events of a followed run, and its summary;
- :mod:`.render`: ``status`` and ``validate`` output, and their JSON documents;
- :mod:`.exits`: the exit codes.
"""

from kontext_batch.cli.commands import main

__all__ = ["main"]
