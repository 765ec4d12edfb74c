import sys

from modelship.server.main import main

sys.exit(main())
