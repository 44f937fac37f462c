"""The fence: a separate process that removes the agent's VIPs when the agent cannot.

``client`` is the agent's end, ``program`` the process itself, ``state`` its pure decisions.
"""
