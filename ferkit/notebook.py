"""Notebook helpers: picking an image in Colab or Jupyter without leaving the notebook."""

from __future__ import annotations

import sys


def in_colab() -> bool:
    """Whether this runs in Google Colab (its kernel has imported google.colab)."""
    return "google.colab" in sys.modules


def image_picker():
    """Ask for an image: Colab's upload dialog, or an ipywidgets FileUpload elsewhere.

    Returns what :func:`picked_image` reads: a ``{name: bytes}`` dict in Colab
    (the dialog blocks until the upload is done), else the FileUpload widget to
    display (pick a file, then run the next cell). Returns None where neither
    is possible (headless runs), and the notebook falls back to its default.
    """
    if in_colab():
        from google.colab import files

        return files.upload()
    try:
        import ipywidgets
        from IPython import get_ipython
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    return ipywidgets.FileUpload(accept="image/*", multiple=False, description="Pick an image")


def picked_image(picker, default):
    """``(image, name)`` from an :func:`image_picker` result, or ``default`` if nothing was picked.

    ``default`` is a path or an array with a name: ``(array, "name")``.
    """
    if isinstance(picker, dict) and picker:
        name, data = next(iter(picker.items()))
        return data, name
    value = getattr(picker, "value", None)
    if value:
        first = value[0] if isinstance(value, (tuple, list)) else next(iter(value.values()))
        return bytes(first["content"]), first.get("name", "upload")
    return default if isinstance(default, tuple) else (default, str(default))
