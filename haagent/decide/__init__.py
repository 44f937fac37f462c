"""Pure decisions: every choice the agent makes about a VIP, as a function of facts.

Nothing in this package does I/O, reads a clock or starts a thread. Each function takes an
immutable :class:`~haagent.cluster.view.ClusterView` and/or local facts and returns the
decision together with the reason an operator reads in the log.
"""
