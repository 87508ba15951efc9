import sys

import ferkit

if getattr(ferkit, "__file__", None) is None:
    # `python -m` puts the working directory first on sys.path, so a folder there named ferkit (a clone of this
    # project, say) is imported as an empty namespace package in place of the installed one.
    shadow = ", ".join(ferkit.__path__)
    print(f"error: the folder {shadow} hides the installed ferkit package from `python -m ferkit`; run it from "
          "another folder (e.g. cd into the clone), or use the `ferkit` command", file=sys.stderr)
    sys.exit(2)

from ferkit.cli import main  # noqa: E402 - only once the package is known to be the real one

sys.exit(main())
