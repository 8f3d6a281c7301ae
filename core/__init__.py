"""varrt's core: errors, the graph contract, VAR defaults and class specs; no varrt imports of its own.

export/, kernels/, runtime/ and bench/ all build on these modules, and they import nothing above them.
"""
