"""What ``{ssl,asr}[/eval]/__main__.py`` here run: fairseq_lite's recipe, once the shadowing is undone.

``python -m ssl`` works from this folder only because the current directory comes first on ``sys.path``, so
this folder's ``ssl/`` is imported as the module ``ssl`` and hides the standard library's (torch, urllib's HTTPS
and anything else imported later would get the recipe package). ``run`` first removes the recipe packages from
``sys.modules`` and this folder from ``sys.path`` and imports the real ``ssl``; then it runs the recipe
(``fairseq_lite.recipes.cli``) with this folder's ``<recipe>/cards`` among the asset card folders.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE_PACKAGES = ("ssl", "asr")


def restore_stdlib_ssl():
    """Undo the shadowing of the standard ``ssl`` module; returns the real module."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    for name in [n for n in sys.modules if n.split(".")[0] in RECIPE_PACKAGES]:
        del sys.modules[name]
    import ssl

    if not hasattr(ssl, "create_default_context"):
        raise ImportError(f"the standard library's ssl module is still shadowed by {ssl.__file__}")
    return ssl


def run(kind):
    """Run recipe ``kind`` (ssl, asr, ssl.eval, asr.eval) on ``sys.argv``."""
    restore_stdlib_ssl()
    from fairseq_lite.recipes.cli import cli_main

    cli_main(kind, cards_dir=os.path.join(HERE, kind.split(".")[0], "cards"))
