"""Device probe, feasibility, battery/thermal policies (see DESIGN.md)."""

from edgefleet.power._probe import probe

__all__ = ["probe"]
