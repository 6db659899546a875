"""The report object: what the builder fills and the figures and exporters read (kept apart so none of them
imports another's module to get its types)."""

from __future__ import annotations

import dataclasses

import tqsim


@dataclasses.dataclass
class Figure:
    """A PNG written beside the page (``file`` relative to the output folder)."""

    key: str
    file: str
    title: str
    caption: str = ""


@dataclasses.dataclass
class Table:
    """Formatted cells, shared by the HTML and Markdown exporters."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclasses.dataclass
class Section:
    key: str
    title: str
    available: bool = True
    missing: str = ""                  # why not (or what is partly missing) and which command fills it
    intro: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)       # numbers, exported by --json
    series: dict = dataclasses.field(default_factory=dict)     # arrays for figures, not exported
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {"title": self.title, "available": self.available, "missing": self.missing or None,
                "notes": list(self.notes), "figures": [f.file for f in self.figures], **self.data}


@dataclasses.dataclass
class Report:
    system: str
    workload: str
    home: str
    settings: dict
    sections: list[Section]
    created_at: str = ""
    tqsim_version: str = tqsim.__version__
    out: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)

    def as_dict(self) -> dict:
        """The numbers of the report (the JSON contract's style, docs/design.md: stable keys, seconds as floats)."""
        return {"system": self.system, "workload": self.workload, "home": self.home, "out": self.out or None,
                "created_at": self.created_at, "tqsim_version": self.tqsim_version, "settings": self.settings,
                "warnings": list(self.warnings),
                "sections": {s.key: s.as_dict() for s in self.sections}}
