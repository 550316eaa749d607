import sys

from runtime.app import main

sys.exit(main())
