"""``python -m haagent.fence``: the fence process the agent starts."""

from haagent.fence.program import main

raise SystemExit(main())
