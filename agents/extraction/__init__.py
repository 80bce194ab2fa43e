"""Extraction: the schema collection and its loader.

    collection = load_file(Path("examples/tensoraios_ecosystem.md"))   # or SchemaErrors

The schema reference (fields, kinds, naming convention) is ``docs/SCHEMA.md``.
"""

from .collection import Collection, SchemaError, SchemaErrors, content_hash
from .kinds import CONVENTIONS, KINDS, Kind, KindSpec, kind_by_convention
from .loader import load_collection, load_file
from .schema import AgentSchema

__all__ = [
    "CONVENTIONS",
    "KINDS",
    "AgentSchema",
    "Collection",
    "Kind",
    "KindSpec",
    "SchemaError",
    "SchemaErrors",
    "content_hash",
    "kind_by_convention",
    "load_collection",
    "load_file",
]
