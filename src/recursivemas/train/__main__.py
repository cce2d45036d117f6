"""``python -m recursivemas.train ...``: the same options as ``recursivemas train``; works under ``torchrun``."""

from recursivemas.commands.train import main

if __name__ == "__main__":
    main()
