"""ferkit: facial expression recognition on FER-2013, for notebooks and the command line."""

__version__ = "0.1.0"
