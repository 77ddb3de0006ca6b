"""Device probe, feasibility, battery/thermal policies (see DESIGN.md)."""

from edgefleet.power._probe import cpu_flags, device_class, probe

__all__ = ["cpu_flags", "device_class", "probe"]
