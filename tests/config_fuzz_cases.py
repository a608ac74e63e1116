"""Hostile config files for the fuzz test, generated from a seed (random.Random: the same
seed gives the same files).

Three realistic bases (tests/configs/quickstart.yaml, tests/configs/seed_config.py and a
small echo-only config that `cloudsend run` can really run) are mutated as data (dropped and
renamed keys, wrong types, extreme numbers, null bytes, RTL marks, 100 kB strings) and then
written as YAML or Python, and hostile texts are made around them (deep nesting, encodings,
truncation, alias bombs, bad tags, two documents, files over the size cap,
Python files that misbehave).

Each Case says what `cloudsend validate` must answer when that is known (`expect`: 0 or 2;
None: either, as long as it is one of them).
"""

from __future__ import annotations

import copy
import math
import random
import runpy
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from cloudsend.config.sources import MAX_FILE_BYTES

FIXTURES = Path(__file__).parent / "configs"
MB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str  # unique, also the file's stem
    kind: str  # the family, for the counts
    suffix: str  # ".yaml" or ".py"
    content: bytes
    expect: int | None = None  # the exit code validate must give, when known
    runs: int = 0  # > 0: valid echo-only config with that many job runs, fit for `run`

    @property
    def filename(self) -> str:
        return self.name + self.suffix


def bases() -> dict[str, dict[str, Any]]:
    quickstart = yaml.safe_load((FIXTURES / "quickstart.yaml").read_text())
    seed = runpy.run_path(str(FIXTURES / "seed_config.py"))["config"]
    # debug: 1 means "tracebacks on error" (by design): the fuzz wants the user's view.
    quickstart["debug"] = 0
    seed["debug"] = 0
    echo = {
        "project": "fuzz",
        "jobs": [
            {"run_command": "echo hi > out.txt", "output_files": "out.txt", "repeat": 2},
            {"run_command": "echo two", "cpus_req": 1},
        ],
    }
    return {"quickstart": quickstart, "seed": seed, "echo": echo}


# -- writing data as YAML or Python ---------------------------------------------------------


def _yaml_safe(value: Any) -> Any:
    if isinstance(value, timedelta):
        return f"{value.total_seconds() / 3600:g}h"
    if isinstance(value, dict):
        return {k: _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    return value


def as_yaml(data: Any) -> str:
    return yaml.safe_dump(_yaml_safe(data), allow_unicode=True, sort_keys=False, width=10**9)


def py_literal(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, timedelta):
        return f"timedelta(seconds={value.total_seconds()!r})"
    if isinstance(value, dict):
        items = ",\n".join(f"    {py_literal(k)}: {py_literal(v)}" for k, v in value.items())
        return "{\n" + items + "\n}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    return repr(value)


def as_python(data: Any) -> str:
    return "from datetime import timedelta\n\nconfig = " + py_literal(data) + "\n"


# -- mutating data --------------------------------------------------------------------------

NUMERIC_KEYS = (
    "repeat", "cpus_req", "number", "cpus", "disk_size", "max_bid", "host_lost_after",
    "debug", "max_cost_per_hour", "port", "eco_life",
)
EXTREMES: tuple[Any, ...] = (
    0, -1, 1, 10**18, -(10**18), math.nan, math.inf, -math.inf, 1e308, 2**63, 2**64 + 1,
    100_000, 100_001, 1_000, 1_001, 1_024, 1_025, 0.5, -0.0, "3", "1e18", True, None, "",
)
ODD_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 3.5, "", "x", [], {}, [1, 2], {"a": 1}, [[["deep"]]], [None],
    {"": None}, "~", "null", "yes",
)
MARKS = ("\u202e", "\u200f", "\u061c", "\u2066", "\u200b", "\ufeff", "\u0000", "\x1b[31m")
ALL_KEYS = (
    "project", "provider", "jobs", "instances", "environments", "hosts", "run_command",
    "run_script", "env_name", "output_files", "input_files", "upload_files", "repeat",
    "cpus_req", "name", "command", "env_pypi", "env_conda", "number", "cpus", "explode",
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in `data` (dict keys and list indices)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.append((*prefix, index))
            out.extend(_paths(value, (*prefix, index)))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _string_paths(data: Any) -> list[tuple[Any, ...]]:
    return [p for p in _paths(data) if isinstance(_parent(data, p)[p[-1]], str)]


def _typo(rng: random.Random, key: str) -> str:
    if len(key) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(key) - 1)
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    return rng.choice([key.upper(), key + "s", key[:-1], key.replace("_", "-"), " " + key,
                       rng.choice(ALL_KEYS)])


def mutate(rng: random.Random, data: dict[str, Any], how: str) -> dict[str, Any]:
    """One hostile change of `how`'s kind somewhere in a copy of `data`."""
    data = copy.deepcopy(data)
    paths = _paths(data)
    if how == "drop":
        path = rng.choice(paths)
        parent = _parent(data, path)
        del parent[path[-1]]
    elif how == "rename":
        keyed = [p for p in paths if isinstance(p[-1], str)]
        path = rng.choice(keyed)
        parent = _parent(data, path)
        parent[_typo(rng, path[-1])] = parent.pop(path[-1])
    elif how == "wrong_type":
        path = rng.choice(paths)
        _parent(data, path)[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif how == "number":
        target = rng.choice([p for p in paths if p[-1] in NUMERIC_KEYS] or paths)
        _parent(data, target)[target[-1]] = rng.choice(EXTREMES)
        if rng.random() < 0.5:  # a number where there was none
            section = rng.choice([d for d in _dicts(data) if d is not data] or [data])
            section[rng.choice(NUMERIC_KEYS)] = rng.choice(EXTREMES)
    elif how in ("null_byte", "rtl"):
        strings = _string_paths(data)
        path = rng.choice(strings) if strings else ("project",)
        parent = _parent(data, path)
        text = parent[path[-1]] if strings else "x"
        mark = "\0" if how == "null_byte" else rng.choice(MARKS)
        at = rng.randrange(len(text) + 1)
        parent[path[-1]] = text[:at] + mark + text[at:]
        if how == "rtl" and rng.random() < 0.3:  # in a key too
            key = rng.choice([p for p in paths if isinstance(p[-1], str)])
            owner = _parent(data, key)
            if key[-1] in owner:
                owner[mark + key[-1]] = owner.pop(key[-1])
    elif how == "big_string":
        size = rng.choice([100_000, 100_001, 150_000])
        big = rng.choice(["x", "a/", "é", "\u202e", " ", "'\"", "../"]) * (size // 2)
        strings = _string_paths(data)
        path = rng.choice(strings) if strings else ("project",)
        _parent(data, path)[path[-1]] = big[:size]
        if rng.random() < 0.3:
            rng.choice(_dicts(data))[big[:size]] = "value"
    else:
        raise ValueError(how)
    return data


def _dicts(data: Any) -> list[dict[str, Any]]:
    found = [data] if isinstance(data, dict) else []
    children = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    for child in children:
        found.extend(_dicts(child))
    return found


def valid_variant(rng: random.Random, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of an echo-only config changed in ways that keep it valid (and quick to run)."""
    data = copy.deepcopy(data)
    jobs = data["jobs"]
    for job in jobs:
        job["repeat"] = rng.randint(1, 3)
    text = rng.choice(["é", "\u202eRTL", "日本語", "tab\there", "\"quoted\"", "emoji \U0001f600"])
    jobs.append({"run_command": f"echo '{text}'", "cpus_req": rng.choice([1, 2, None])})
    extra: dict[str, Any] = rng.choice(
        [
            {"job_assign": "random"},
            {"recover": False},
            {"dev": True, "mutualize_uploads": False},
            {"instances": [{"cpus": rng.randint(2, 4), "number": rng.randint(1, 2)}]},
            {"profile": None, "auto_stop": True},
            {"environments": []},
        ]
    )
    data.update(extra)
    if rng.random() < 0.5:
        jobs[0]["output_files"] = rng.choice(["out.txt", ["./out.txt", "out.txt"]])
    return data


# -- hostile texts --------------------------------------------------------------------------


def nested_texts(rng: random.Random, depth: int) -> list[tuple[str, str]]:
    """(form, YAML text) nesting `depth` deep, in the forms YAML has."""
    forms = [
        ("flow-list", "jobs: " + "[" * depth + "]" * depth + "\n"),
        ("flow-map", "jobs: " + "{a: " * depth + "1" + "}" * depth + "\n"),
        ("block-seq", "jobs:\n  " + "- " * depth + "x\n"),
        ("unclosed", "jobs: [{run_command: echo, output_files: " + "[" * depth + "\n"),
        ("in-key", "jobs:\n  - run_command: echo\n    output_files: " + "[" * depth + "]" * depth),
    ]
    if depth <= 2000:  # indentation grows as depth²
        forms.append(("block-map", "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "\n"))
    return [rng.choice(forms)] if depth > 2000 else forms[:3] + [rng.choice(forms[3:])]


def alias_bomb(width: int, depth: int, merge: bool) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, depth):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    if merge:
        lines.append("m0: &m0 {run_command: echo}")
        lines.append("jobs: [{<<: [*m0], output_files: *a" + str(depth - 1) + "}]")
    else:
        lines.append(f"jobs: *a{depth - 1}")
    return "\n".join(lines) + "\n"


BAD_TAGS = (
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/name:os.system",
    "!!python/object:builtins.object {}",
    "!!binary 'zz%%'",
    "!!binary aGVsbG8=",
    "!!timestamp 2020-13-45",
    "!!timestamp x",
    "!!int 0xZZ",
    "!!int ''",
    "!!float abc",
    "!!bool maybe",
    "!!set {a, b}",
    "!!omap [a: 1, b: 2]",
    "!!pairs [a: 1]",
    "!custom value",
    "!<tag:example.com,2000:thing> value",
    "!!null notnull",
    "!!str [a, b]",
    "!!map [1, 2]",
    "!!seq {a: 1}",
    "!!merge x",
    "!!value x",
    "!!yaml x",
    "!!float .nan",
    "!!int 99999999999999999999999999999999999999",
    "&anchor !!str tagged",
    "*undefined_alias",
)


def python_cases() -> list[tuple[str, str, int | None]]:
    """(name, source, expected exit) of Python configs that misbehave."""
    return [
        ("syntax", "config = {\n  'jobs': [1 2],\n", 2),
        ("unclosed", "config = {'jobs': [", 2),
        ("raises", "raise RuntimeError('boom')\nconfig = {}\n", 2),
        ("keyerror", "import os\nconfig = {'project': os.environ['CLOUDSEND_FUZZ_UNSET']}\n", 2),
        ("exit3", "import sys\nsys.exit(3)\n", 2),
        ("exit0", "import sys\nsys.exit(0)\n", 2),
        ("exit-builtin", "exit()\n", 2),
        ("generator-exit", "raise GeneratorExit\n", 2),
        ("base-exception", "class Stop(BaseException):\n    pass\nraise Stop('x')\n", 2),
        ("recursion", "def f():\n    return f()\nconfig = f()\n", 2),
        ("memory", "config = {'project': 'x' * (1 << 62)}\n", 2),
        ("no-config", "settings = {'jobs': []}\n", 2),
        ("config-none", "config = None\n", 2),
        ("config-list", "config = [1, 2, 3]\n", 2),
        ("config-generator", "config = (x for x in range(10))\n", 2),
        ("huge-list", "config = {'jobs': [{'run_command': 'echo'}] * 10_000_000}\n", 2),
        (
            "comprehension",
            "config = {'jobs': [{'run_command': f'echo {i}'} for i in range(300_000)]}\n",
            2,
        ),
        ("infinite-iter", "import itertools\nconfig = {'jobs': itertools.count()}\n", 2),
        ("self-ref", "config = {'jobs': []}\nconfig['jobs'].append(config)\n", 2),
        ("deep-loop", "x = []\nfor _ in range(100_000):\n    x = [x]\nconfig = {'jobs': x}\n", 2),
        ("deep-literal", "config = {'jobs': " + "[" * 5000 + "]" * 5000 + "}\n", 2),
        ("deep-expr", "config = {'repeat': " + "1+" * 100_000 + "1}\n", 2),
        ("big-int", "config = {'jobs': [{'run_command': 'echo', 'repeat': 10**100_000}]}\n", 2),
        (
            "big-floats",
            "config = {'host_lost_after': 10**400, 'instances': [{'eco_life': 10**400, "
            "'max_bid': 10**400}], 'jobs': [{'run_command': 'echo'}]}\n",
            2,
        ),
        ("nan", "config = {'jobs': [{'run_command': 'echo', 'repeat': float('nan')}]}\n", 2),
        (
            "odd-objects",
            "class A:\n    def __repr__(self):\n        raise ValueError('no repr')\n"
            "config = {'jobs': [A()], 'project': b'bytes', A(): 1, 3: 'x'}\n",
            2,
        ),
        (
            "subclasses",
            "class S(str):\n    def strip(self, *a):\n        raise ValueError('strip')\n"
            "    def __eq__(self, other):\n        raise ValueError('eq')\n"
            "    __hash__ = str.__hash__\n"
            "class D(dict):\n    def items(self):\n        raise ValueError('items')\n"
            "    def keys(self):\n        raise ValueError('keys')\n"
            "class I(int):\n    def __index__(self):\n        raise ValueError('index')\n"
            "    def __int__(self):\n        raise ValueError('int')\n"
            "config = D({S('project'): S('fuzz'), 'jobs': [D(run_command=S('echo'), "
            "repeat=I(2), output_files=[S('o.txt')])]})\n",
            0,
        ),
        ("null-in-source", "config = {}\x00\n", 2),
        (
            "null-in-values",
            "config = {'project': 'a\\0b', 'jobs': [{'run_command': 'echo\\0'}]}\n",
            2,
        ),
        ("timedelta-huge", "from datetime import timedelta\nconfig = {'instances': "
                           "[{'eco_life': timedelta(days=999999999)}]}\n", 2),
        ("import-missing", "import cloudsend_no_such_module\nconfig = {}\n", 2),
        ("print-noise", "print('hello from the config')\nconfig = {'jobs': [{'run_command': "
                        "'echo'}]}\n", 0),
        ("paths", "from pathlib import Path\nconfig = {'jobs': [{'run_command': 'echo', "
                  "'output_files': [Path('o.txt')]}]}\n", 0),
    ]


# -- the whole set ---------------------------------------------------------------------------


def generate(seed: int) -> list[Case]:
    rng = random.Random(seed)
    base = bases()
    cases: list[Case] = []

    def add(kind: str, suffix: str, content: str | bytes, expect: int | None = None,
            runs: int = 0) -> None:
        raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        cases.append(Case(f"{len(cases):03d}-{kind}", kind, suffix, raw, expect, runs))

    # The bases themselves, as YAML and as Python.
    for data in base.values():
        add("base", ".yaml", as_yaml(data), 0)
        add("base", ".py", as_python(data), 0)

    # Data mutations, written as YAML (mostly) or Python.
    kinds = ("drop", "rename", "wrong_type", "number", "null_byte", "rtl", "big_string")
    for how in kinds:
        for _ in range(24):
            data = base[rng.choice(list(base))]
            for _ in range(rng.choice([1, 1, 2, 3])):
                try:
                    data = mutate(rng, data, how)
                except (IndexError, KeyError, TypeError):
                    break  # nothing left of that kind to mutate
            if rng.random() < 0.3:
                add(how, ".py", as_python(data))
            else:
                add(how, ".yaml", as_yaml(data))

    # Valid variants of the echo config (validate must say ok; some are also run).
    for index in range(40):
        data = valid_variant(rng, base["echo"])
        runs = sum(job.get("repeat", 1) for job in data["jobs"])
        if index % 5 == 4:
            add("valid", ".py", as_python(data), 0, runs)
        else:
            text = as_yaml(data)
            raw = text.encode()
            encoded = rng.choice(["plain", "crlf", "bom", "cr"])
            if encoded == "crlf":
                raw = text.replace("\n", "\r\n").encode()
            elif encoded == "bom":
                raw = b"\xef\xbb\xbf" + raw
            elif encoded == "cr":
                raw = text.replace("\n", "\r").encode()
            add("valid", ".yaml", raw, 0, runs)

    # Nesting 200 to 100 000 deep.
    for depth in (200, 300, 1000, 5000, 20_000, 100_000):
        for _, text in nested_texts(rng, depth):
            add("nesting", ".yaml", text, 2)
    for depth in (33, 34, 40):
        add("nesting", ".yaml", "jobs: " + "[" * depth + "]" * depth + "\n", 2)

    # Encodings and line ends.
    echo_text = as_yaml(base["echo"])
    quick_text = (FIXTURES / "quickstart.yaml").read_text().replace("debug: 1", "debug: 0")
    accented = echo_text.replace("echo two", "echo café ☕")
    for name, raw, expect in (
        ("latin1", accented.encode("latin-1", "replace"), 2),
        ("utf16-le-bom", accented.encode("utf-16"), 2),
        ("utf16-be", accented.encode("utf-16-be"), 2),
        ("utf16-be-bom", b"\xfe\xff" + accented.encode("utf-16-be"), 2),
        ("utf32", accented.encode("utf-32"), 2),
        ("utf8-bom", b"\xef\xbb\xbf" + accented.encode(), 0),
        ("double-bom", b"\xef\xbb\xbf\xef\xbb\xbf" + accented.encode(), None),
        ("bom-middle", accented.encode().replace(b"jobs", b"\xef\xbb\xbfjobs", 1), None),
        ("crlf", quick_text.replace("\n", "\r\n").encode(), 0),
        ("cr-only", quick_text.replace("\n", "\r").encode(), 0),
        ("mixed-ends", quick_text.replace("\n", "\r\n", 5).encode(), 0),
        ("bad-byte", accented.encode().replace(b"hi", b"h\xffi"), 2),
        ("overlong", accented.encode().replace(b"hi", b"h\xc0\xafi"), 2),
        ("surrogate", accented.encode().replace(b"hi", b"h\xed\xa0\x80i"), 2),
        ("cut-char", accented.encode().split("é".encode())[0] + "é".encode()[:1], 2),
        ("tabs", quick_text.replace("  - ", "\t- ").encode(), None),
        ("nul-bytes", quick_text.replace("\n", "\0\n", 3).encode(), 2),
        ("random-binary", rng.randbytes(4096), 2),
        ("empty", b"", 2),
        ("only-bom", b"\xef\xbb\xbf", 2),
        ("whitespace", b"   \n\n\t\n", 2),
    ):
        add(f"encoding-{name}", ".yaml", raw, expect)
    add("encoding-latin1", ".py", as_python(base["echo"]).encode().replace(b"two", b"caf\xe9"), 2)
    add("encoding-utf16", ".py", as_python(base["echo"]).encode("utf-16"), 2)
    add("encoding-crlf", ".py", as_python(base["echo"]).replace("\n", "\r\n").encode(), 0)

    # Truncated files (anywhere, also inside a multi-byte character).
    sources = [
        (quick_text.encode(), ".yaml"),
        (accented.encode(), ".yaml"),
        ((FIXTURES / "seed_config.py").read_bytes(), ".py"),
        (as_yaml(base["seed"]).encode(), ".yaml"),
    ]
    for _ in range(40):
        raw, suffix = rng.choice(sources)
        add("truncated", suffix, raw[: rng.randrange(1, len(raw))])

    # Alias bombs and self-references.
    for width, depth in ((10, 6), (9, 8), (20, 5), (3, 20), (50, 4), (2, 40), (100, 3)):
        add("alias-bomb", ".yaml", alias_bomb(width, depth, merge=False), 2)
        add("alias-bomb", ".yaml", alias_bomb(width, depth, merge=True), 2)
    for text in (
        "jobs: &a [*a]\n",
        "jobs: &a [{run_command: echo, output_files: *a}]\n",
        "x: &a {k: *a}\njobs: [*a]\n",
        "jobs: &a\n  - run_command: echo\n    upload_files: *a\n",
        "a: &a {<<: *a}\n",
        "jobs: [&j {run_command: echo}, *j, *j, *j]\n",  # valid: four jobs sharing one node
    ):
        add("alias-self", ".yaml", text, 0 if "*j, *j" in text else 2)

    # Bad tags, in the place of a real value.
    for tag in BAD_TAGS:
        data = copy.deepcopy(base[rng.choice(["quickstart", "echo"])])
        path = rng.choice(_paths(data))
        _parent(data, path)[path[-1]] = "@@HOLE@@"
        add("bad-tag", ".yaml", as_yaml(data).replace("'@@HOLE@@'", tag).replace("@@HOLE@@", tag))
    add("bad-tag", ".yaml", "%TAG ! tag:example.com,2000:\n---\njobs: !thing [1]\n")
    add("bad-tag", ".yaml", "%YAML 9.9\n---\njobs: []\n")
    add("bad-tag", ".yaml", "%YAML 1.1\n%YAML 1.1\n---\njobs: []\n", 2)

    # Two documents (and other document markers).
    for text, expect in (
        (echo_text + "---\n" + echo_text, 2),
        ("---\n" + echo_text + "...\n---\n" + echo_text, 2),
        (echo_text + "---\n", None),
        (echo_text + "...\n", 0),
        ("---\n" + echo_text, 0),
        ("--- !!map\n" + echo_text, None),
        (echo_text + "---\n- a\n- b\n", 2),
        ("--- |\n  text\n", 2),
    ):
        add("two-documents", ".yaml", text, expect)

    # Big files: ones over the size limit and ones well under it.
    over = MAX_FILE_BYTES + MB
    add("big-file", ".yaml", "# " + "x" * over + "\n" + echo_text, 2)
    add("big-file", ".yaml", "project: '" + "a" * over + "'\n", 2)
    add("big-file", ".yaml", "jobs:\n" + "  - run_command: echo hi\n" * (over // 24), 2)
    add("big-file", ".yaml", "jobs: [" + "1," * (over // 2) + "]\n", 2)
    add("big-file", ".py", "config = {'jobs': []}\n" + "# padding\n" * (over // 10), 2)
    under = 4 * MB - 4096
    add("big-file", ".yaml", "# " + "x" * under + "\n" + echo_text, 0)
    add("big-file", ".yaml", "jobs:\n  - run_command: 'echo " + "y" * under + "'\n", 0)
    add("big-file", ".yaml", "jobs: [" + "1," * (under // 2) + "]\n", 2)
    add("big-file", ".yaml", "jobs:\n" + "  - run_command: echo hi\n" * (under // 24), 2)
    # Near MAX_NODES: 30 000 jobs are 90 000 values (valid), 40 000 are 120 000 (too many).
    add("big-file", ".yaml", "jobs:\n" + "  - {run_command: echo, repeat: 2}\n" * 40_000, 2)
    add("big-file", ".yaml", "jobs:\n" + "  - {run_command: echo, repeat: 2}\n" * 30_000, 0)

    # Python configs that misbehave.
    for name, source, expect in python_cases():
        add(f"python-{name}", ".py", source, expect)

    # Random damage to real files: characters swapped, deleted, doubled.
    specials = list("[]{}:-?|>&*!%@`'\",#\t\n\r\\") + ["\0", "\u202e", "\ufeff", "---", ": &a"]
    for _ in range(40):
        raw, suffix = rng.choice(sources[:2] + [(echo_text.encode(), ".yaml")])
        text = raw.decode()
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(specials) + text[at + rng.randint(0, 3) :]
        add("damaged", suffix, text)
    return cases
