import sys

from talk.cli import main

sys.exit(main())
