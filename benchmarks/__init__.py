"""The benchmarks: scripts run as ``python benchmarks/NAME.py``; a package only so that tests can import the
helpers they share with them, ``benchmarks.common``."""
