"""``python -m ambient_med``: the same as the ``ambient-med`` console script."""

from .cli import app

if __name__ == "__main__":
    app()
