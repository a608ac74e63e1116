"""cloudsend: run your scripts on cloud machines from one config file.

Kept import-light on purpose: `cloudsend --help` must not pay for pydantic, fabric or pulumi.
"""

__version__ = "0.1.0"
