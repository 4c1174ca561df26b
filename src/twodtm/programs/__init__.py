"""The programs a user runs: each reads its inputs, calls the core and writes results.

``match`` (global search), ``peaks`` (picking), ``refine``, ``constrained`` and
``optimize`` (local searches), ``batch`` (many micrographs), ``demo`` and
``benchmark``. Programs are thin: the physics lives in ``twodtm.ctf``,
``twodtm.preprocess`` and ``twodtm.orientations``, the global search in
``twodtm.search``, the local search in ``twodtm.local``.
"""
