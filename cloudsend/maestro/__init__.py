"""`maestro: remote`: what lets the watcher run on another machine.

- `runkey`: the key made for a run, installed on (and removed from) the workers'
  authorized_keys, so the maestro never holds the user's own private key;
- `ship`: cloudsend itself (its wheel, a venv with its dependencies) and the run's files
  sent to the maestro, content-keyed and resumable.

Layer: beside the pipeline; imports transport, config and errors only (providers/ssh may
import it to remove the run key on `down`).
"""
