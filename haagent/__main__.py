from haagent.cli import main

raise SystemExit(main())
