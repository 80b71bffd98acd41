"""The ``tokenagent`` command line (private: its Python API may change; the command names may not)."""
