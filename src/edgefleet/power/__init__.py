"""Devices that know themselves: probe, fit prediction, device state, power and thermal policies."""

from edgefleet.power._governor import DeviceGovernor, PowerGate
from edgefleet.power._policy import POLICY_FILE, Policy, PolicyEngine
from edgefleet.power._probe import probe
from edgefleet.power._state import DeviceState, ScriptedSource, SysfsSource, open_state_source
from edgefleet.power._trigger import EnergyGate, parse_trigger

__all__ = [
    "POLICY_FILE",
    "DeviceGovernor",
    "DeviceState",
    "EnergyGate",
    "Policy",
    "PolicyEngine",
    "PowerGate",
    "ScriptedSource",
    "SysfsSource",
    "open_state_source",
    "parse_trigger",
    "probe",
]
