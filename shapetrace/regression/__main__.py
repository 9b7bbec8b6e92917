import sys

from shapetrace.regression.runner import main

sys.exit(main())
