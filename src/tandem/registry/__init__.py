"""Registry of model versions: names, numbered versions, aliases, tags and lineage.

Example:
    >>> parse_ref("fraud@champion")
    ModelRef(name='fraud', version=None, alias='champion')
"""

from tandem.registry.refs import ModelRef, parse_ref, validate_name
from tandem.registry.store import (
    Decision,
    ModelSummary,
    ModelVersion,
    Registry,
    Run,
    RunRecord,
    VersionRecord,
)

__all__ = [
    "Decision",
    "ModelRef",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "Run",
    "RunRecord",
    "VersionRecord",
    "parse_ref",
    "validate_name",
]
