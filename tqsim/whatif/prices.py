"""The prices file of ``tqsim plan --cost``: what an hour of each system costs, so that set-ups on different
machine types compare in money rather than in cores (a core of a laptop and one of a server are not worth the
same). docs/design.md, "Fleets", gives the format::

    currency = "EUR"              # optional, for display
    [systems.laptop]
    replica_hour = 0.12           # each replica costs this per hour ...
    [systems.c7i]
    machine_hour = 0.36           # ... or the machine does, whatever runs on it
    cores = 8                     # optional: this machine's core budget (default: --cores)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from tqsim.errors import UserError

UNITS = {"replica_hour": "replica", "machine_hour": "machine"}
EXAMPLE = "[systems.NAME] replica_hour = 0.12 (or machine_hour = 0.40)"


@dataclasses.dataclass(frozen=True)
class Price:
    """One system's price: ``amount`` per hour of each replica, or of the whole machine."""

    system: str
    per: str             # "replica" or "machine"
    amount: float        # per hour
    cores: int | None = None
    currency: str = ""

    def hourly(self, setup) -> float:
        """What a serving set-up (:class:`~tqsim.whatif.simulator.ServingSetup`) costs per hour here."""
        return self.amount * (setup.replicas if self.per == "replica" else 1)

    def describe(self) -> str:
        return f"{self.amount:g}{' ' + self.currency if self.currency else ''}/{self.per}-hour"

    def as_dict(self) -> dict:
        return {f"{self.per}_hour": self.amount, "cores": self.cores, "currency": self.currency or None}


def read_prices(path: Path) -> dict[str, Price]:
    """Every system's :class:`Price` in ``path``; a malformed file is refused naming the entry and the fix."""
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--cost {path}: no such prices file; write one with {EXAMPLE} per system.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"--cost {path}: not a readable TOML prices file ({exc}); give {EXAMPLE} per system.") from None
    currency = doc.get("currency", "")
    systems = doc.get("systems")
    if not isinstance(systems, dict) or not systems or not isinstance(currency, str):
        raise UserError(f"--cost {path}: holds no [systems.NAME] table; give {EXAMPLE} per system.")
    out = {}
    for name, entry in systems.items():
        given = [k for k in UNITS if isinstance(entry, dict) and k in entry]
        unknown = sorted(set(entry) - set(UNITS) - {"cores"}) if isinstance(entry, dict) else []
        if len(given) != 1 or unknown:
            raise UserError(f"--cost {path}: [systems.{name}] needs exactly one of replica_hour or machine_hour"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else "") + f"; e.g. {EXAMPLE}.")
        amount, cores = entry[given[0]], entry.get("cores")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not (math.isfinite(amount)
                                                                                   and amount >= 0):
            raise UserError(f"--cost {path}: [systems.{name}] {given[0]} = {amount!r}: give a price ≥ 0 per hour.")
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
            raise UserError(f"--cost {path}: [systems.{name}] cores = {cores!r}: give a whole number ≥ 1.")
        out[name] = Price(name, UNITS[given[0]], float(amount), cores, currency)
    return out


def prices_for(path: Path, systems: list[str]) -> dict[str, Price]:
    """The prices of ``systems``, refusing (naming them and the fix) any the file leaves out."""
    prices = read_prices(path)
    missing = [s for s in systems if s not in prices]
    if missing:
        raise UserError(f"--cost {path} has no price for system{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}; add " + " and ".join(f"[systems.{s}] replica_hour = … (or "
                                                                     "machine_hour)" for s in missing[:2])
                        + (" …" if len(missing) > 2 else "") + ", or leave it out with --systems.")
    return {s: prices[s] for s in systems}
