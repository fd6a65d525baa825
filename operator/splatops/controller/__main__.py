import sys

from splatops.controller.main import main

sys.exit(main())
