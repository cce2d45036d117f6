"""``python -m recursivemas ...``: the command line, also under ``torchrun -m recursivemas train ...``."""

from recursivemas.cli import main

if __name__ == "__main__":
    main()
