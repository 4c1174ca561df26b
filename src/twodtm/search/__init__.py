"""The global search: search space, engine, statistics, executors and checkpoints.

``space`` holds what is searched, ``statistics`` the merged result, the engine's
modules the correlation of one orientation batch, ``executors`` and ``runner``
the spread of chunks over devices and processes, ``checkpoint`` the resumable
state. The maths here is device-agnostic; the programs (``twodtm.programs``)
call it.
"""
