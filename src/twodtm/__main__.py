"""``python -m twodtm``: the command line."""

from twodtm.launch import main

if __name__ == "__main__":
    main()
