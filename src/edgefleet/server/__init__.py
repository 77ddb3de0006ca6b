"""server stage of edgefleet (see DESIGN.md)."""

__all__: list[str] = []
