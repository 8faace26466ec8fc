from pimail.cli import main

raise SystemExit(main())
