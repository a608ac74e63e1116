"""What the laptop tells cloudsend running on an AWS maestro (`maestro: remote`, provider aws).

The laptop writes it into the run's bundle as `.cloudsend/on_maestro.json`; the AWS provider on
the maestro reads it (`read(config.base_dir)`). It holds nothing secret: the run key travels
beside it as the bundle's `.cloudsend/run_key` (0600), and AWS credentials never travel at all
(the maestro has its instance profile).

Ground floor (like digest.py): both the laptop side (pipeline.maestro_aws) and the provider on
the maestro (providers.aws) import it, and it imports nothing of cloudsend.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE = ".cloudsend/on_maestro.json"  # in the bundle (the maestro's run dir)
RUN_KEY = ".cloudsend/run_key"  # bundle-relative: the maestro's key to the workers


@dataclass(frozen=True)
class OnAwsMaestro:
    instance_id: str  # the maestro itself: auto_stop stops it last, once every result is on it
    region: str  # the maestro's region
    stack: str  # the Pulumi stack the laptop deployed
    # the stack's outputs at `run` time: {"instances": {name: {id, public_ip, private_ip,
    # region, user[, port]}}, "maestro": {...}}. The maestro reaches workers by private_ip
    # (stable across stop/start inside the VPC); `port` only appears in test stacks.
    outputs: dict[str, Any] = field(default_factory=dict)
    # True with a shared state backend (s3://...): the maestro runs the Pulumi engine itself
    # and re-creates interrupted spot workers. False (file://): it cannot; their jobs go to
    # the remaining workers and `status` says re-creation waits for `cloudsend up` here.
    pulumi_here: bool = False
    key: str = RUN_KEY

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> OnAwsMaestro:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError(f"{FILE} is not a JSON object")
        return cls(
            instance_id=str(doc["instance_id"]),
            region=str(doc["region"]),
            stack=str(doc["stack"]),
            outputs=dict(doc.get("outputs") or {}),
            pulumi_here=bool(doc.get("pulumi_here", False)),
            key=str(doc.get("key") or RUN_KEY),
        )


def read(base_dir: Path) -> OnAwsMaestro | None:
    """The contract in a run dir on the maestro; None anywhere else (the laptop)."""
    path = base_dir / FILE
    if not path.is_file():
        return None
    return OnAwsMaestro.from_json(path.read_text())


def write(base_dir: Path, side: OnAwsMaestro) -> Path:
    path = base_dir / FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(side.to_json())
    os.replace(tmp, path)
    return path
