from ota_daemon.cli import main

raise SystemExit(main())
