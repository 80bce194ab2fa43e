"""The evidence report engine: the 10 sections of one run, from audit records only,
rendered as Markdown or JSON, signed (Ed25519) and verifiable against the trail.

:func:`build_report` (pure) turns a run's entries into a :class:`Report`;
:func:`sign_report` signs it; :func:`render` writes it; :func:`report_from_trail`
and :func:`verify_report_text` do the same against an :class:`~memory.audit.AuditRecorder`.
"""

from .build import ChainPoint, NoRecordsError, ReportError, build_report, derive_outcome, entries_digest
from .model import FORMAT, Declaration, Failure, Outcome, RecordView, Report, Section, Stamp
from .render import EMPTY_SECTION, FORMATS, Format, render
from .sections import CURRENT_VERSION, TABLES, SectionSpec, SectionTable, table
from .sign import report_digest, sign_report, signature_problem
from .trail import covering_checkpoint, report_from_trail, verify_parsed, verify_report_text
from .verify import ParsedReport, ReportCheck, ReportFormatError, first_difference, parse_report

__all__ = [
    "CURRENT_VERSION",
    "EMPTY_SECTION",
    "FORMAT",
    "FORMATS",
    "TABLES",
    "ChainPoint",
    "Declaration",
    "Failure",
    "Format",
    "NoRecordsError",
    "Outcome",
    "ParsedReport",
    "RecordView",
    "Report",
    "ReportCheck",
    "ReportError",
    "ReportFormatError",
    "Section",
    "SectionSpec",
    "SectionTable",
    "Stamp",
    "build_report",
    "covering_checkpoint",
    "derive_outcome",
    "entries_digest",
    "first_difference",
    "parse_report",
    "render",
    "report_digest",
    "report_from_trail",
    "sign_report",
    "signature_problem",
    "table",
    "verify_parsed",
    "verify_report_text",
]
