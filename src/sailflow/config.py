"""Checking the workflow config against its JSON schema, with errors a person can act on.

Snakemake's own ``validate`` prints the whole schema on an error and says little about where the
offending key is. :func:`check_config` lists every error as ``<key path>: <what is wrong>`` (with a
"did you mean" for misspelt keys), so ``dowload:`` or ``runs.demo.align.learning_rate`` stop the
workflow before any job runs. Defaults are then filled in by Snakemake's ``validate`` as before.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

import yaml


# Keys that never change a result, only how it is computed or reported; they stay out of params (so
# changing them reruns nothing) and out of training identities (so a resume may change them).
PARALLELISM_KEYS = frozenset({"processes", "threads"})  # download:, filter:
ALIGN_RUNTIME_KEYS = frozenset({"log_every", "checkpoint_every"})  # align:


def without(settings: dict, keys) -> dict:
    """``settings`` without ``keys``: what decides a result."""
    return {k: v for k, v in settings.items() if k not in keys}


def digest(obj) -> str:
    """A short, stable hash of a JSON-able config value (key order does not matter): fingerprints
    of runs, of training identities, of backbone specs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """The config does not match the schema; the message lists every problem with its key path."""


def _path(error) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    """Property names a (sub)schema allows, following ``$ref`` and ``allOf``."""
    keys = list(schema.get("properties", {}))
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        keys += _allowed_keys(node, root)
    for sub in schema.get("allOf", []):
        keys += _allowed_keys(sub, root)
    return sorted(set(keys))


def _describe(error, root: dict) -> str:
    where = _path(error)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error.schema, root)
        extra = sorted(set(error.instance) - set(allowed))
        if allowed and extra:
            lines = []
            for key in extra:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                lines.append(f"{where}: unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")
            return "\n".join(lines)
    return f"{where}: {error.message}"


def _leaves(error):
    """The most specific errors under a combinator error (allOf/if-then report their causes in ``context``)."""
    if error.context:
        for sub in error.context:
            yield from _leaves(sub)
    else:
        yield error


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every problem of ``config`` under ``schema`` as ``<key path>: <message>`` lines, in key order."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    found = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        if error.validator in ("oneOf", "anyOf"):
            found.append(_describe(error, schema))  # its branches' errors would only confuse
            continue
        for leaf in _leaves(error):
            found.append(_describe(leaf, schema))
    return list(dict.fromkeys(found))


def export_source(workflow_dir: str | Path) -> None:
    """Tell the processes the workflow starts where its checkout is (``SAILFLOW_SOURCE``): the conda
    env's post-deploy script installs the package from there."""
    import os

    os.environ["SAILFLOW_SOURCE"] = str(Path(workflow_dir).resolve())


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise :class:`ConfigError` naming every key of ``config`` that ``schema_path`` rejects."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = config_errors(config, schema)
    if errors:
        raise ConfigError("config/config.yaml does not match workflow/schemas/config.schema.yaml:\n  " + "\n  ".join(errors))
