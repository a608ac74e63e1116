"""Bootstrap rendering: environments → self-contained bootstrap.sh, jobs → run.sh.

Templates live in the top-level `templates/` folder (shipped as `cloudsend/templates` in the
wheel); see docs/internals.md, "bootstrap", for the contract with the agent.
"""

from __future__ import annotations

from cloudsend.bootstrap.failure import bootstrap_error, bootstrap_failure_reason
from cloudsend.bootstrap.jinja import template_dir
from cloudsend.bootstrap.render import RenderedEnv, render_environment, render_job_script

__all__ = [
    "RenderedEnv",
    "bootstrap_error",
    "bootstrap_failure_reason",
    "render_environment",
    "render_job_script",
    "template_dir",
]
