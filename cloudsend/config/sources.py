"""Reading a config source into plain data plus the line of every key.

YAML lines come from the composed node tree (one parse: compose, then construct). Python
files are run with runpy (the original tool's `config = {...}` format) and their lines come
from the `ast` of the dict literal assigned to `config`, following simple names
(`jobs = [...]; config = {"jobs": jobs}`); where a key cannot be found its line is omitted.
"""

from __future__ import annotations

import ast
import gc
import os
import runpy
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloudsend.config.messages import Issue, KeyPath, Locator, config_error, describe

YAML_SUFFIXES = (".yaml", ".yml")
PYTHON_SUFFIXES = (".py",)

# Bounds on what a config file may hold (real configs are a few kB and nest 4 deep), so a
# hostile file ends in a ConfigError within a second instead of minutes or gigabytes.
MAX_FILE_BYTES = 16 * 1024 * 1024  # a 10 MB generated command line fits
MAX_DEPTH = 32  # levels of keys and list items
MAX_NODES = 100_000  # values, after YAML aliases are expanded (the loader checks those)

# libyaml's parser (shipped in PyYAML's wheels) is ~15x faster than the pure-Python one.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Source:
    data: Any
    name: str | None  # the file as the user named it, for messages
    path: Path | None  # absolute
    base_dir: Path  # absolute: relative paths in the config are resolved against it
    lines: dict[KeyPath, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)  # found while reading (duplicate keys)


def _absolute(path: str | os.PathLike[str], what: str, where: Locator) -> Path:
    """`path` made absolute; a relative one needs the working directory, which may be gone."""
    if os.path.isabs(path):
        return Path(os.path.normpath(path))
    try:
        return Path(os.path.abspath(path))
    except FileNotFoundError:  # os.getcwd() of a removed directory
        raise config_error(
            [
                Issue(
                    (),
                    f"the current directory no longer exists, so {what} cannot be found",
                    hint="cd to an existing directory, or give an absolute path",
                )
            ],
            where,
        ) from None


def read_source(source: str | Path | dict[Any, Any], base_dir: Path | None) -> Source:
    if isinstance(source, dict):
        # A dict has no folder of its own: relative paths in it are resolved against base_dir,
        # or the current directory when none is given (the caller's explicit choice).
        given = base_dir if base_dir is not None else "."
        folder = _absolute(given, "the folder for relative paths (base_dir)", Locator())
        return Source(source, None, None, folder)
    if not isinstance(source, (str, os.PathLike)):
        raise config_error(
            [Issue((), f"expected a file path or a dict, got {type(source).__name__}")],
            Locator(),
        )
    name = os.fspath(source)
    where = Locator(name)
    path = _absolute(Path(name).expanduser(), "a relative config path", where)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise config_error([Issue((), "is a directory, not a config file")], where)
    if suffix not in YAML_SUFFIXES + PYTHON_SUFFIXES:
        raise config_error(
            [Issue((), f"unsupported config file type {suffix!r}; use .yaml, .yml or .py")],
            where,
        )
    if not path.is_file():
        raise config_error([Issue((), "not found", hint=f"looked for {path}")], where)
    folder = _absolute(base_dir, "base_dir", where) if base_dir is not None else path.parent
    if suffix in YAML_SUFFIXES:
        data, lines, issues = _read_yaml(path, where)
    else:
        data, lines = _read_python(path, where)
        issues = []
    return Source(data, name, path, folder, lines, issues)


def _read_bytes(path: Path, where: Locator) -> bytes:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)  # never more: the file may be huge
    except OSError as exc:
        raise config_error([Issue((), f"cannot be read: {exc.strerror or exc}")], where) from None
    if len(raw) > MAX_FILE_BYTES:
        try:
            size = f"{path.stat().st_size / 2**20:.1f} MB"
        except OSError:
            size = "too large"
        raise config_error(
            [
                Issue(
                    (),
                    f"is {size}; a config file may be at most {MAX_FILE_BYTES // 2**20} MB",
                    hint="use repeat: rather than listing jobs one by one, or split the config",
                )
            ],
            where,
        )
    return raw


def _read_text(path: Path, where: Locator) -> str:
    raw = _read_bytes(path, where)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = "save the file as UTF-8"
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "the file is UTF-16 text: save it as UTF-8"
        raise config_error(
            [Issue((), f"is not UTF-8 text ({exc.reason} at byte {exc.start})", hint=hint)],
            where,
        ) from None


def _read_yaml(path: Path, where: Locator) -> tuple[Any, dict[KeyPath, int], list[Issue]]:
    text = _read_text(path, where)
    _check_yaml_shape(text, where)
    collecting = gc.isenabled()
    # Composing makes a few objects per node and no garbage: the cyclic GC re-scanning them
    # again and again was most of the time of a big file (x8 measured with libyaml).
    gc.disable()
    try:
        return _compose(text, where)
    finally:
        if collecting:
            gc.enable()


def _compose(text: str, where: Locator) -> tuple[Any, dict[KeyPath, int], list[Issue]]:
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise config_error([_yaml_issue(exc)], where) from None
    except RecursionError:
        raise config_error([Issue((), "is nested too deeply to read")], where) from None
    except Exception as exc:
        # PyYAML's constructors fail with plain exceptions on some bad tagged values
        # (e.g. `!!timestamp x`): still the file's fault, so still a ConfigError.
        raise config_error([Issue((), f"cannot be read as YAML: {describe(exc)}")], where) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise config_error([Issue((), "is empty", hint=_TOP_HINT)], where) from None
    lines, issues = _yaml_lines(node)
    return data, lines, issues


def _check_yaml_shape(text: str, where: Locator) -> None:
    """Refuse a file nested deeper than MAX_DEPTH or with far more than MAX_NODES nodes from
    the parser's events (a flat loop) before a tree is composed: PyYAML's composers recurse
    (100 000 `[` overflow libyaml's C stack: a segfault) and a huge tree takes minutes."""
    parser = _Loader(text)
    depth = nodes = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                nodes += 1
            elif isinstance(event, yaml.CollectionStartEvent):
                nodes += 1
                depth += 1
                if depth > MAX_DEPTH + 1:  # the top mapping is depth 1, its keys' values 2
                    line = event.start_mark.line + 1 if event.start_mark else None
                    deep = f"nests deeper than {MAX_DEPTH} levels"
                    raise config_error([Issue((), deep, line=line)], where)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if nodes > 2 * MAX_NODES:  # keys count here too: the loader counts values
                big = f"is too large (more than {MAX_NODES} values)"
                raise config_error([Issue((), big)], where)
    except yaml.YAMLError as exc:
        raise config_error([_yaml_issue(exc)], where) from None
    finally:
        parser.dispose()


_TOP_HINT = "a config is a mapping of keys: project:, instances:, environments:, jobs:"


def _yaml_issue(exc: yaml.YAMLError) -> Issue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    text = problem or str(exc)
    if context:
        text = f"{text} ({context})"
    hint = "check indentation and quoting at that line (YAML does not allow tabs)"
    if mark is not None:
        return Issue((), f"YAML syntax error: {text}", hint=hint, line=mark.line + 1)
    return Issue((), f"YAML syntax error: {text}", hint=hint)


def _yaml_lines(root: yaml.Node) -> tuple[dict[KeyPath, int], list[Issue]]:
    lines: dict[KeyPath, int] = {}
    issues: list[Issue] = []
    seen: set[int] = set()  # aliases share nodes: walk each once (and never loop)
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                line = key.start_mark.line + 1
                if key.value in first and key.value != "<<":
                    issues.append(
                        Issue(
                            (*path, key.value),
                            f"duplicate key (first at line {first[key.value]}); keep one",
                            line=line,
                        )
                    )
                first.setdefault(key.value, line)
                lines.setdefault((*path, key.value), line)
                stack.append((value, (*path, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                stack.append((item, (*path, index)))
    return lines, issues


def _read_python(path: Path, where: Locator) -> tuple[Any, dict[KeyPath, int]]:
    _read_bytes(path, where)  # only its size: Python decodes it (a `coding:` line may say how)
    try:
        namespace = runpy.run_path(str(path), run_name="__cloudsend_config__")
    except SyntaxError as exc:
        line = exc.lineno if exc.filename == str(path) else None
        raise config_error(
            [Issue((), f"Python syntax error: {exc.msg}", line=line)], where
        ) from None
    except KeyboardInterrupt:
        raise  # Ctrl-C while the file runs: an interruption, not the file's fault
    except BaseException as exc:
        # Running the user's file is running their code: any failure is a config error
        # (SystemExit, GeneratorExit and other BaseExceptions included).
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        line = frames[-1].lineno if frames else None
        text = f"running the file raised {describe(exc)}"
        if isinstance(exc, SystemExit):
            text = "running the file called exit()"
        raise config_error(
            [Issue((), text, line=line, hint="fix the file so `python FILE` runs")], where
        ) from None
    if "config" not in namespace:
        raise config_error(
            [Issue((), "defines no `config` variable", hint="assign config = {...} in the file")],
            where,
        )
    return namespace["config"], _python_lines(path)


def _python_lines(path: Path) -> dict[KeyPath, int]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError, OSError):
        return {}
    names: dict[str, ast.expr] = {}  # module-level `name = <expr>`, the last one wins
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = stmt.value
        elif (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and stmt.value is not None
        ):
            names[stmt.target.id] = stmt.value
    lines: dict[KeyPath, int] = {}
    if "config" not in names:
        return lines
    stack: list[tuple[ast.expr, KeyPath, int]] = [(names["config"], (), 0)]
    budget = 20_000  # names can point at each other: bound the walk
    while stack and budget > 0:
        budget -= 1
        node, keys, hops = stack.pop()
        if isinstance(node, ast.Name) and node.id in names and hops < 20:
            stack.append((names[node.id], keys, hops + 1))  # follow `jobs = [...]`
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    lines[keys + (key.value,)] = key.lineno
                    stack.append((value, keys + (key.value,), hops))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "dict":
                for kw in node.keywords:
                    if kw.arg is not None:
                        lines[keys + (kw.arg,)] = kw.value.lineno
                        stack.append((kw.value, keys + (kw.arg,), hops))
        elif isinstance(node, (ast.List, ast.Tuple)):
            for index, item in enumerate(node.elts):
                if isinstance(item, ast.Starred):
                    break  # indices after a *spread are unknown
                lines[keys + (index,)] = item.lineno
                stack.append((item, keys + (index,), hops))
    return lines
