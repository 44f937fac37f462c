"""Health checks (tcp, http, exec, interface) with rise/fall, and notify hooks.

* :mod:`haagent.health.state`: the pure rise/fall machine and a VIP's aggregate health.
* :mod:`haagent.health.checks`: one run of one check, always a result, never an exception.
* :mod:`haagent.health.monitor`: runs the checks on their intervals and reports
  :class:`VipHealthChanged` to the agent.
* :mod:`haagent.health.notify`: runs the on_acquire / on_release / on_fault hooks.

docs/health-checks.md describes the behaviour for operators.
"""

from haagent.health.checks import CheckResult, run_check
from haagent.health.monitor import HealthMonitor, VipHealthChanged
from haagent.health.notify import Notifier
from haagent.health.state import CheckState, Transition, VipHealth

__all__ = [
    "CheckResult",
    "CheckState",
    "HealthMonitor",
    "Notifier",
    "Transition",
    "VipHealth",
    "VipHealthChanged",
    "run_check",
]
