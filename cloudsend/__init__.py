"""cloudsend: run your scripts on cloud machines from one config file.

Kept import-light on purpose: `cloudsend --help` must not pay for pydantic, fabric or pulumi.
"""

from cloudsend import phases  # noqa: F401  (first: it times what follows; off by default)

__version__ = "0.1.0"
