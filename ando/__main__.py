from ando.cli import main

raise SystemExit(main())
