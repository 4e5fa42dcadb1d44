"""Fleet-level views of the per-device schedule (the simulator and planner grow here)."""
