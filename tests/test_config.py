"""cloudsend.config: loading both formats, every validation message, notices, schema."""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from cloudsend.config import (
    Config,
    JobConfig,
    config_json_schema,
    load_config,
)
from cloudsend.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the fixture scripts, data and env files a config can point at."""
    for name in ("scripts", "data", "env"):
        shutil.copytree(CONFIGS / name, tmp_path / name)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing `needle` (keeps tests readable)."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def error_of(source: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- good files -----------------------------------------------------------------------------


def test_yaml_config_loads_with_absolute_paths() -> None:
    config = load_config(CONFIGS / "quickstart.yaml")
    assert config.source == CONFIGS / "quickstart.yaml"
    assert config.base_dir == CONFIGS
    assert config.project_name == "quickstart"
    assert config.debug == 1 and config.job_assign == "multi_knapsack"
    py, julia = config.environments
    assert py.env_pypi == CONFIGS / "env" / "requirements.txt"
    assert py.env_aptget == ["curl"]  # a scalar becomes a list
    assert py.command == str(CONFIGS / "env" / "setup.sh")  # an existing file: made absolute
    assert julia.command == 'echo "inline setup"'  # not a file: an inline command, untouched
    train, fit, uname = config.jobs
    assert train.upload_files == [CONFIGS / "data" / "params.json"]
    assert train.input_files == [CONFIGS / "data" / "input.csv"]
    assert train.output_files == ["results/metrics.json", "model.pt"]  # ./model.pt normalised
    assert (train.cpus_req, train.repeat) == (2, 2)
    assert fit.output_files == ["fit.txt"]  # output_file folded into output_files
    assert uname.run_script is None and uname.run_command == "uname -a > uname.txt"


def test_script_argv_is_split_and_absolute() -> None:
    config = load_config(CONFIGS / "quickstart.yaml")
    train, fit, uname = config.jobs
    script = str(CONFIGS / "scripts" / "train.py")
    assert config.script_argv(train) == [script, "--epochs", "3", "arg two"]
    assert config.script_argv(fit) == [str(CONFIGS / "scripts" / "fit.jl")]
    assert config.script_argv(uname) is None
    # A Config built in code (not loaded) resolves against its own base_dir.
    direct = Config(base_dir=Path("/srv/project"))
    job = JobConfig(run_script="bin/run.py 'a b'")
    assert direct.script_argv(job) == ["/srv/project/bin/run.py", "a b"]


def test_seed_python_config_with_original_keys() -> None:
    config = load_config(str(CONFIGS / "seed_config.py"))
    assert config.source == CONFIGS / "seed_config.py"
    assert config.job_assign == "multi_knapsack"  # None: the default
    (instance,) = config.instances
    assert instance.eco and instance.eco_life == timedelta(hours=2)
    assert instance.max_bid == pytest.approx(0.05)  # the original wrote it as a string
    assert instance.cpus is None and instance.number == 2
    (env,) = config.environments
    assert env.name is None
    assert env.env_julia == ["Wavelets"]  # a str becomes a list
    assert env.env_conda == CONFIGS / "env" / "environment.yml"
    assert env.env_conda_channels == []
    first, second = config.jobs
    assert first.upload_files == [CONFIGS / "data" / "uploaded.txt"]  # a str becomes a list
    assert first.input_files == [CONFIGS / "data" / "input.csv"]  # input_file, singular
    assert first.output_files == ["output.dat"]  # output_file, singular
    assert first.cpus_req == 1 and second.cpus_req == 2  # None: the default
    assert config.environment(first.env_name) is env  # the only environment


def test_dict_source_resolves_against_base_dir(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"jobs": [{"run_script": "scripts/train.py", "upload_files": "data/input.csv"}]}
    config = load_config(data, base_dir=project)
    assert config.source is None and config.base_dir == project
    assert config.jobs[0].upload_files == [project / "data" / "input.csv"]
    monkeypatch.chdir(project)
    assert load_config(data).base_dir == project  # default: the current directory


def test_env_name_none_picks_the_only_environment_else_none() -> None:
    one = load_config({"environments": [{"name": "a"}], "jobs": [{"run_command": "ls"}]})
    assert one.environment(one.jobs[0].env_name) is one.environments[0]
    two = load_config(
        {"environments": [{"name": "a"}, {"name": "b"}], "jobs": [{"run_command": "ls"}]}
    )
    assert two.environment(two.jobs[0].env_name) is None  # no environment: system tools
    assert two.environment("b") is two.environments[1]


# -- unknown keys and types -----------------------------------------------------------------


def test_typo_key_yaml_has_did_you_mean_and_line(project: Path) -> None:
    path = write(
        project,
        "quickstart.yaml",
        """
        project: demo
        jobs:
          - run_command: ls
          - run_command: pwd
            repet: 3
        """,
    )
    message = error_of(path)
    assert f"quickstart.yaml:{line_of(path, 'repet')}: jobs[1].repet" in message
    assert "unknown key 'repet'; did you mean 'repeat'?" in message


def test_typo_key_python_has_line_from_ast(project: Path) -> None:
    path = write(
        project,
        "seed.py",
        """
        jobs = [
            {'run_command': 'ls'},
            {'run_command': 'ls',
             'cpus_reqq': 2},
        ]
        config = {
            'projet': 'x',
            'jobs': jobs,
        }
        """,
    )
    message = error_of(path)
    assert "2 problems in" in message
    assert (
        f"seed.py:{line_of(path, 'projet')}: projet: unknown key 'projet'; did you mean 'project'?"
        in message
    )
    assert f"seed.py:{line_of(path, 'cpus_reqq')}: jobs[1].cpus_reqq" in message
    assert "did you mean 'cpus_req'?" in message


def test_key_in_the_wrong_section_says_where_it_belongs() -> None:
    message = error_of({"repeat": 2})
    assert "repeat: unknown key 'repeat' here; it belongs in jobs[] entries" in message
    near = error_of({"jobs": [{"run_command": "ls", "cpus": 2}]})
    assert (
        "jobs[0].cpus: unknown key 'cpus' here; did you mean 'cpus_req'? "
        "('cpus' belongs in instances[] entries)" in near
    )


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"instances": [{"zzz": 1}]})
    assert "instances[0].zzz: unknown key 'zzz'" in info.value.message
    assert info.value.hint is not None and "eco_life" in info.value.hint


def test_loader_owned_keys_are_not_config_keys() -> None:
    assert "unknown key 'base_dir'" in error_of({"base_dir": "/tmp"})


def test_wrong_types_are_all_reported_with_path_line_and_values(project: Path) -> None:
    path = write(
        project,
        "types.yaml",
        """
        debug: 7
        jobs:
          - run_command: ls
            cpus_req: many
          - run_command: ls
            repeat: -2
          - run_command: ls
            cpus_req: 0
        instances:
          - eco: maybe
        """,
    )
    message = error_of(path)
    assert message.startswith("5 problems in")
    assert (
        f"types.yaml:{line_of(path, 'maybe')}: instances[0].eco: expected true or false" in message
    )
    assert "types.yaml:1: debug: expected an integer from 0 to 3, got 7" in message
    assert (
        f"types.yaml:{line_of(path, 'many')}: jobs[0].cpus_req: "
        "expected an integer from 1 to 1024, got 'many'" in message
    )
    assert (
        f"types.yaml:{line_of(path, '-2')}: jobs[1].repeat: "
        "expected an integer from 1 to 100000, got -2"
        in message
    )
    assert (
        f"types.yaml:{line_of(path, ': 0')}: jobs[2].cpus_req: "
        "expected an integer from 1 to 1024, got 0"
        in message
    )


def test_optional_int_bounds_are_named() -> None:
    message = error_of({"instances": [{"cpus": 0, "disk_size": "big"}]})
    assert "instances[0].cpus: expected an integer from 1 to 1024, got 0" in message
    assert "instances[0].disk_size: expected an integer from 1 to 65536, got 'big'" in message


def test_wrong_bool_and_yes_as_a_count() -> None:
    message = error_of({"auto_stop": "maybe", "jobs": [{"run_command": "ls", "repeat": True}]})
    assert "auto_stop: expected true or false, got 'maybe'" in message
    assert "jobs[0].repeat: expected an integer, got True" in message


def test_literals_list_the_allowed_values() -> None:
    message = error_of({"job_assign": "knapsack", "provider": "gcp"})
    assert (
        "job_assign: expected one of 'random', 'multi_knapsack', got 'knapsack'; "
        "did you mean 'multi_knapsack'?" in message
    )
    assert "provider: expected one of 'local', 'ssh', 'aws', got 'gcp'" in message


def test_number_where_a_string_is_expected_suggests_quotes() -> None:
    assert "project: expected a string (put the value in quotes), got 2024" in error_of(
        {"project": 2024}
    )


def test_singular_alias_is_named_as_written(project: Path) -> None:
    path = write(project, "alias.yaml", "jobs:\n  - run_command: ls\n    input_file: {a: 1}\n")
    assert "alias.yaml:3: jobs[0].input_file: expected a list" in error_of(path)


# -- cross-section checks -------------------------------------------------------------------


def test_maestro_remote_is_not_supported_yet(project: Path) -> None:
    path = write(project, "m.yaml", "project: x\nmaestro: remote\n")
    assert error_of(path) == (
        f"{path}:2: maestro: remote is not supported with provider: local (only with "
        "provider: ssh and a maestro_host:, or provider: aws)\n  hint: use maestro: local"
    )


def test_unknown_env_name_has_did_you_mean(project: Path) -> None:
    path = write(
        project,
        "e.yaml",
        """
        environments:
          - name: python
          - name: julia
        jobs:
          - env_name: pyhton
            run_command: ls
        """,
    )
    message = error_of(path)
    assert (
        f"e.yaml:{line_of(path, 'pyhton')}: jobs[0].env_name: unknown environment 'pyhton'"
        in message
    )
    assert "did you mean 'python'?" in message
    nothing = error_of({"jobs": [{"env_name": "x", "run_command": "ls"}]})
    assert "unknown environment 'x' (no environment has a name)" in nothing


def test_environment_names_unique_and_none_only_when_alone(project: Path) -> None:
    path = write(
        project,
        "envs.yaml",
        """
        environments:
          - name: py
          - name: py
          - env_aptget: curl
        """,
    )
    message = error_of(path)
    assert (
        "envs.yaml:3: environments[1].name: duplicate environment name 'py' (also environments[0])"
        in message
    )
    assert (
        "envs.yaml:4: environments[2].name: "
        "missing: with several environments each needs a unique name" in message
    )
    assert load_config({"environments": [{"env_aptget": "curl"}]}).environments[0].name is None


def test_job_needs_run_script_or_run_command(project: Path) -> None:
    path = write(
        project, "j.yaml", "jobs:\n  - run_command: ls\n  - repeat: 2\n    run_command: ''\n"
    )
    assert (
        "j.yaml:3: jobs[1]: needs run_script (a script and its arguments) or run_command"
        in error_of(path)
    )


def test_missing_files_are_all_reported_at_once(project: Path) -> None:
    path = write(
        project,
        "files.yaml",
        """
        environments:
          - name: py
            env_pypi: env/missing-requirements.txt
            command: env/missing-setup.sh
        jobs:
          - run_script: scripts/nope.py --flag
            upload_files: [data/input.csv, data/nope.csv]
            input_file: nope.dat
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert message.startswith("5 problems in")
    assert (
        "files.yaml:3: environments[0].env_pypi: path 'env/missing-requirements.txt' not found "
        f"(looked for {project}/env/missing-requirements.txt)" in message
    )
    assert (
        "files.yaml:4: environments[0].command: script 'env/missing-setup.sh' not found" in message
    )
    assert (
        "files.yaml:6: jobs[0].run_script: script 'scripts/nope.py' not found "
        f"(looked for {project}/scripts/nope.py)" in message
    )
    assert "files.yaml:7: jobs[0].upload_files[1]: file 'data/nope.csv' not found" in message
    assert "files.yaml:8: jobs[0].input_file[0]: file 'nope.dat' not found" in message
    assert (
        info.value.hint
        == f"relative paths are resolved against the config file's folder, {project}"
    )


def test_a_directory_is_not_an_upload(project: Path) -> None:
    message = error_of({"jobs": [{"run_command": "ls", "upload_files": "data"}]}, base_dir=project)
    assert "jobs[0].upload_files[0]: 'data' is a directory" in message


def test_output_paths_must_stay_in_the_work_dir(project: Path) -> None:
    path = write(
        project,
        "out.yaml",
        """
        jobs:
          - run_command: ls
            output_files:
              - /etc/passwd
              - ../escape.txt
              - a/../../b.txt
              - results/../ok.txt
        """,
    )
    message = error_of(path)
    assert message.startswith("3 problems in")
    assert "out.yaml:4: jobs[0].output_files[0]: '/etc/passwd' is an absolute path" in message
    assert (
        "out.yaml:5: jobs[0].output_files[1]: '../escape.txt' leaves the job's work dir" in message
    )
    assert (
        "out.yaml:6: jobs[0].output_files[2]: 'a/../../b.txt' leaves the job's work dir" in message
    )
    assert "ok.txt" not in message  # stays inside: fine (and normalised)
    ok = load_config({"jobs": [{"run_command": "ls", "output_files": "results/../ok.txt"}]})
    assert ok.jobs[0].output_files == ["ok.txt"]


def test_colliding_basenames_in_one_job(project: Path) -> None:
    (project / "other").mkdir()
    (project / "other" / "input.csv").write_text("x")
    job = {"run_command": "ls", "upload_files": "data/input.csv", "input_files": "other/input.csv"}
    message = error_of({"jobs": [job]}, base_dir=project)
    assert "jobs[0].input_files[0]: 'other/input.csv' and jobs[0].upload_files[0]" in message
    assert "would both be 'input.csv' in the job's work dir" in message
    # The script is linked into the work dir too.
    (project / "other" / "train.py").write_text("")
    scripted = {"run_script": "scripts/train.py", "upload_files": "other/train.py"}
    message = error_of({"jobs": [scripted]}, base_dir=project)
    assert "jobs[0].upload_files[0]: 'other/train.py' and jobs[0].run_script" in message
    # The same file twice, or in two different jobs, is fine.
    same = {"run_command": "ls", "upload_files": "data/input.csv", "input_files": "data/input.csv"}
    load_config({"jobs": [same, {**job, "input_files": []}]}, base_dir=project)


def test_run_script_with_unbalanced_quotes() -> None:
    message = error_of({"jobs": [{"run_script": "run.py 'oops"}]})
    assert "jobs[0].run_script: cannot be split into a script and arguments" in message


# -- reading files --------------------------------------------------------------------------


def test_yaml_syntax_error_has_line(project: Path) -> None:
    path = write(project, "bad.yaml", "project: x\njobs:\n  - run_command: ls\n   repeat: [2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}:4: YAML syntax error")
    assert info.value.hint is not None and "indentation" in info.value.hint


def test_yaml_duplicate_key(project: Path) -> None:
    path = write(project, "dup.yaml", "project: a\ndebug: 1\nproject: b\n")
    assert "dup.yaml:3: project: duplicate key (first at line 1)" in error_of(path)


def test_top_level_must_be_a_mapping(project: Path) -> None:
    path = write(project, "list.yaml", "- run_command: ls\n")
    assert "the top level must be a mapping of keys, got a list" in error_of(path)
    assert "is empty" in error_of(write(project, "empty.yaml", "# nothing\n"))


def test_python_file_without_config(project: Path) -> None:
    path = write(project, "noconfig.py", "settings = {'jobs': []}\n")
    assert (
        error_of(path)
        == f"{path}: defines no `config` variable\n  hint: assign config = {{...}} in the file"
    )


def test_python_file_that_raises_points_at_the_line(project: Path) -> None:
    path = write(
        project,
        "raises.py",
        """
        import os

        config = {
            'jobs': [{'run_command': os.environ['CLOUDSEND_SURELY_UNSET_VAR']}],
        }
        """,
    )
    message = error_of(path)
    assert message.startswith(f"{path}:4: running the file raised KeyError")
    assert "CLOUDSEND_SURELY_UNSET_VAR" in message
    exits = write(project, "exits.py", "import sys\nsys.exit(3)\n")
    assert f"{exits}:2: running the file called exit()" in error_of(exits)


def test_python_syntax_error_has_line(project: Path) -> None:
    path = write(project, "syntax.py", "config = {\n  'jobs': [1 2],\n}\n")
    assert error_of(path).startswith(f"{path}:2: Python syntax error")


def test_python_config_must_be_a_dict(project: Path) -> None:
    path = write(project, "list.py", "config = [1, 2]\n")
    assert "the top level must be a mapping of keys, got a list" in error_of(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.yaml", "missing.yaml: not found"),
        ("cfg.json", "unsupported config file type '.json'"),
    ],
)
def test_bad_paths(project: Path, name: str, expected: str) -> None:
    (project / "cfg.json").write_text("{}")
    assert expected in error_of(project / name)


def test_directory_and_bad_source_type(project: Path) -> None:
    assert "is a directory, not a config file" in error_of(project)
    assert "expected a file path or a dict, got int" in error_of(3)


def test_not_utf8(project: Path) -> None:
    path = project / "latin1.yaml"
    path.write_bytes("project: caf\u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text" in error_of(path)


def test_self_referencing_yaml_does_not_hang(project: Path) -> None:
    path = write(project, "loop.yaml", "jobs: &a [*a]\n")
    assert "nests deeper than" in error_of(path)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n"
        for p, n in zip("abcdef", "bcdefg", strict=True)
    )
    assert "is too large" in error_of(write(project, "bomb.yaml", bomb))


def test_non_string_keys_and_odd_values() -> None:
    assert "keys must be strings, got 1" in error_of({1: "x"})
    assert "jobs[0].run_command: unsupported value of type set" in error_of(
        {"jobs": [{"run_command": {"ls"}}]}
    )


# -- notices and schema ---------------------------------------------------------------------


def test_local_notices_name_each_ignored_cloud_key() -> None:
    from cloudsend.providers.local import local_notices  # the local provider's knowledge

    config = load_config(CONFIGS / "seed_config.py")
    notices = local_notices(config)
    assert notices == [
        f"instances[0].{key} is ignored by the local provider (it only means something on a cloud)"
        for key in ("eco", "eco_life", "max_bid", "type")
    ]  # region/gpu/... are None in the file: not set, no notice
    with_profile = config.model_copy(
        update={"aws": config.aws.model_copy(update={"profile": "work"})}
    )
    assert local_notices(with_profile)[0].startswith("profile is ignored by the local provider")
    assert local_notices(config.model_copy(update={"provider": "aws"})) == []
    assert local_notices(load_config(CONFIGS / "quickstart.yaml")) == []


def test_schema_describes_every_key() -> None:
    schema = config_json_schema()
    json.dumps(schema)  # plain JSON
    assert schema["type"] == "object" and schema["$schema"].startswith("https://json-schema.org")
    assert {"jobs", "instances", "environments"} <= set(schema["properties"])
    assert "source" not in schema["properties"] and "base_dir" not in schema["properties"]
    job = schema["$defs"]["JobConfig"]
    assert job["additionalProperties"] is False
    assert {"run_script", "input_file", "output_file", "repeat"} <= set(job["properties"])
    for definition in [schema, *schema["$defs"].values()]:
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{key} has no description"
    cpus = schema["$defs"]["InstanceConfig"]["properties"]["cpus"]
    # bounds survive on optional fields
    assert {"type": "integer", "minimum": 1, "maximum": 1024} in cpus["anyOf"]


def test_schema_accepts_the_example_config() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert list(validator.iter_errors(data)) == []
    assert list(validator.iter_errors({"jobs": [{"repet": 1}]}))  # typos flagged in editors
