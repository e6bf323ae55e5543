from churnguard.cli import main

raise SystemExit(main())
