"""``python -m twodtm``: the command line."""

from twodtm.cli import main

if __name__ == "__main__":
    main()
