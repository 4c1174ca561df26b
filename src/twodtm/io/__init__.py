"""File input and output (I/O): MRC maps, particle tables, search results, inputs.

``mrc`` reads and writes maps, ``tables`` particle tables (STAR, CSV),
``results`` the result directory of a search, ``inputs`` the one policy that
checks what the programs read and may overwrite; ``atomic`` makes every write
all-or-nothing.
"""
