import sys

from fb3stack.cli.main import main

sys.exit(main())
