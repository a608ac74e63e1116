"""The Jinja side of bootstrap rendering: where the templates live and how values are quoted.

Every value that reaches a shell script goes through `shlex.quote` (`|q`, `|qjoin`); embedded
file contents go through `heredoc`, whose delimiter is derived from the content so a file can
never end the heredoc early (and the rendering stays deterministic, which the env_id needs).
StrictUndefined turns a typo in a template into an error at render time, not an empty string
in a script that then does something else on a host.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from cloudsend.errors import BootstrapError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../cloudsend


def template_dir() -> Path:
    """The templates folder: `cloudsend/templates` in a wheel, `<repo>/templates` in a checkout.

    The wheel location is tried first so an installed cloudsend never picks up a stray
    `templates/` folder that happens to sit beside site-packages.
    """
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates"):
        if (candidate / "bootstrap").is_dir():
            return candidate
    raise BootstrapError(
        "cloudsend's templates folder is missing",
        hint="reinstall cloudsend (the wheel must include cloudsend/templates)",
    )


def q(value: Any) -> str:
    """One shell word, whatever the value holds (spaces, quotes, `$HOME`, newlines)."""
    return shlex.quote(str(value))


def qjoin(values: Iterable[Any]) -> str:
    """Several shell words, each quoted: for `cmd {{ args|qjoin }}` and bash arrays."""
    return " ".join(q(v) for v in values)


def comment(value: Any) -> str:
    """Text safe inside a `# comment` line: a newline in a name must not start a command."""
    return " ".join(str(value).split())


def heredoc_delimiter(content: str) -> str:
    """A delimiter no line of `content` can equal: a hash of the content itself."""
    salt = 0
    while True:
        digest = hashlib.sha256(f"{salt}:{content}".encode()).hexdigest()[:20]
        delimiter = f"CLOUDSEND_EOF_{digest}"
        if delimiter not in content.splitlines():
            return delimiter
        salt += 1  # practically unreachable; kept so correctness does not rest on luck


def heredoc(content: str, target: str) -> str:
    """`cat > "target" <<'DELIM'` ... : the quoted delimiter means no expansion inside.

    `target` is a template-controlled shell path expression such as `$CLOUDSEND_ENV_DIR/x`
    (never user input), placed inside double quotes so the variable still expands.
    """
    if '"' in target or "`" in target:
        raise BootstrapError(f"internal error: unsafe heredoc target {target!r}")
    if not content.endswith("\n"):
        content += "\n"
    delimiter = heredoc_delimiter(content)
    return f"cat > \"{target}\" <<'{delimiter}'\n{content}{delimiter}"


@lru_cache(maxsize=4)
def _environment(root: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # shell, not HTML: quoting is done explicitly with |q
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # bash's `${#array[@]}` would open a Jinja comment: template comments are {## ##}.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["q"] = q
    env.filters["qjoin"] = qjoin
    env.filters["comment"] = comment
    env.globals["heredoc"] = heredoc
    return env


def jinja_environment(root: Path | None = None) -> jinja2.Environment:
    """The shared Jinja environment (StrictUndefined, no autoescape, |q and |qjoin filters)."""
    return _environment(str(root or template_dir()))


def render_template(name: str, context: dict[str, Any], *, root: Path | None = None) -> str:
    try:
        return jinja_environment(root).get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        raise BootstrapError(f"template {name} uses an undefined value: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise BootstrapError(f"template {name} is broken: {exc}") from exc


def read_template_file(name: str) -> str:
    """A non-Jinja file kept beside the templates (e.g. the rattler installer script)."""
    return (template_dir() / name).read_text(encoding="utf-8")
