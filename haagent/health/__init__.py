"""Health checks (tcp, http, exec, interface) with rise/fall, and notify hooks.

* :mod:`haagent.health.state`: the pure rise/fall machine and a VIP's aggregate health.
* :mod:`haagent.health.checks`: one run of one check, always a result, never an exception.
* :mod:`haagent.health.monitor`: runs the checks on their intervals and reports
  :class:`~haagent.health.events.VipHealthChanged` to the agent.
* :mod:`haagent.health.events`: what the monitor reports (importable without the checks).
* :mod:`haagent.health.notify`: runs the on_acquire / on_release / on_fault hooks.

docs/health-checks.md describes the behaviour for operators.
"""
